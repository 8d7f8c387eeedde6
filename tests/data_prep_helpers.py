"""Shared pieces of the data_prep tests: tiny fixtures, builds, and reading shards back."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import webdataset as wds

from data_prep.build_shards import build_shards
from data_prep.make_fixture import make_fixture

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(classes=5, train_per_class=6, val_per_class=2)


def fixture(path: Path, layout: str, quirks: bool = True, seed: int = 0, **sizes) -> dict:
    return make_fixture(path, layout, quirks=quirks, seed=seed, **{**SMALL, **sizes})


def build(source: Path, out: Path, **kw) -> dict:
    kw.setdefault("shard_size", 8)
    kw.setdefault("workers", 1)
    return build_shards(source, out, log=lambda *a: None, **kw)


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, **kw)


def output_digest(out: Path) -> dict[str, str]:
    """sha256 of every shard and stats.npz: what must be byte-identical between builds."""
    files = sorted(out.glob("*.tar")) + [out / "stats.npz"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def read_split(out: Path, split: str) -> list[tuple]:
    """(key, HxWx3 uint8, cls, wnid) of every sample, read with stock webdataset."""
    urls = [str(out / s["name"]) for s in manifest(out)["splits"][split]["shards"]]
    ds = wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("__key__", "jpg", "cls", "wnid")
    return [(k, img, cls, wnid.decode()) for k, img, cls, wnid in ds]
