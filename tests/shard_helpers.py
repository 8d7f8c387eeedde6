"""Tiny shard sets written directly with webdataset's TarWriter, for the loader and
trainer tests (independent of data_prep, which has its own tests)."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from repro.data.order import EpochPlan


def class_image(rng: np.random.Generator, label: int, classes: int) -> np.ndarray:
    """256x256 RGB: a class-specific colour and stripe frequency plus noise (learnable)."""
    yy, xx = np.mgrid[0:256, 0:256]
    hue = np.array([np.cos(2 * np.pi * (label / classes + k / 3)) for k in range(3)])
    stripes = np.sin(xx * (label + 1) * np.pi / 32 + yy * (classes - label) * np.pi / 64)
    img = 128 + 60 * hue[None, None, :] + 40 * stripes[..., None] + rng.normal(0, 12, (256, 256, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_shards(out: Path, classes=4, train=40, val=12, shard_size=10, seed=0, test=0,
                 first_wnid=0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    manifest = {"format_version": 1, "splits": {}, "settings": {"data": "generated"},
                "classes": [f"n{i:08d}" for i in range(first_wnid, first_wnid + classes)]}
    pixels = []
    for split, n in (("train", train), ("val", val), ("test", test)):
        if not n:
            continue
        shards = []
        for first in range(0, n, shard_size):
            name = f"{split}-{first // shard_size:06d}.tar"
            count = min(shard_size, n - first)
            with wds.TarWriter(str(out / name)) as sink:
                for i in range(first, first + count):
                    label = int(rng.integers(classes))
                    img = class_image(rng, label, classes)
                    if split == "train":
                        pixels.append(img)
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="JPEG", quality=95)
                    sink.write({"__key__": f"{split}_{i:05d}", "jpg": buf.getvalue(),
                                "cls": str(label).encode(), "wnid": manifest["classes"][label].encode()})
            shards.append({"name": name, "count": count})
        manifest["splits"][split] = {"count": n, "shards": shards}
    stack = np.stack(pixels).astype(np.float64)
    flat = stack.reshape(-1, 3)
    cov = np.cov(flat, rowvar=False, bias=True)
    eigval, eigvec = np.linalg.eigh(cov)
    np.savez(out / "stats.npz", mean_image=stack.mean(0).astype(np.float32), rgb_mean=flat.mean(0),
             rgb_cov=cov, eigval=eigval[::-1], eigvec=eigvec[:, ::-1], count=len(pixels))
    manifest["stats"] = {"file": "stats.npz", "sha256": sha256(out / "stats.npz"), "count": train}
    (out / "manifest.json").write_text(json.dumps(manifest))      # last, as a build writes it
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def other_stats(shards: Path, out: Path, in_manifest: bool = True) -> Path:
    """A copy of `shards` whose stats.npz has a mean image one grey level brighter: the same
    class list, another shard set (in_manifest: recorded in its manifest, as a rebuild would;
    else a stats.npz replaced after the build)."""
    shutil.copytree(shards, out)
    with np.load(out / "stats.npz") as z:
        stats = dict(z)
    stats["mean_image"] = stats["mean_image"] + 1
    np.savez(out / "stats.npz", **stats)
    if in_manifest:
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["stats"]["sha256"] = sha256(out / "stats.npz")
        (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def plan(shards, **kw) -> EpochPlan:
    """An epoch of `shards` (a split's Shard list) as the loader tests read it: one worker,
    batches of 5, random 227 crops and mirrors, shuffled; `kw` changes any of it."""
    base = dict(shards=tuple(shards), epoch=0, seed=1, rank=0, world=1, batch_size=5, workers=1,
                crop="random", crop_size=227, flip=True, shuffle=True, shuffle_buffer=16)
    return EpochPlan(**base | kw)
