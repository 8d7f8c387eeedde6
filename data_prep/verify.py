"""python -m data_prep.verify DIR: check a shard directory against its manifest.

Re-hashes every shard and stats.npz, reads every tar header to count samples
and check that each has jpg/cls/wnid with a class index that matches the
class list, and flags shard files the manifest does not name. ``--decode``
also decodes every JPEG and checks it is 256x256 RGB. Exit status 0 if all is
well, 1 with a list of problems otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .manifest import STATS, load_manifest
from .stats import STATS_KEYS

EXTS = ("cls", "jpg", "wnid")


def _check_shard(path: Path, entry: dict, classes: list[str], decode: bool) -> list[str]:
    problems = []
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        problems.append(f"{path.name}: sha256 differs from the manifest")
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                samples[key][ext] = tar.extractfile(m).read()
    except tarfile.TarError as e:
        return problems + [f"{path.name}: not a readable tar ({e})"]
    if len(samples) != entry["count"]:
        problems.append(f"{path.name}: {len(samples)} samples, the manifest says {entry['count']}")
    for key in order:
        s = samples[key]
        if sorted(s) != sorted(EXTS):
            problems.append(f"{path.name}: sample {key} has {sorted(s)}, expected {list(EXTS)}")
            continue
        cls, wnid = int(s["cls"]), s["wnid"].decode()
        if not 0 <= cls < len(classes) or classes[cls] != wnid:
            problems.append(f"{path.name}: sample {key} has cls {cls} but wnid {wnid}")
        if decode:
            im = Image.open(io.BytesIO(s["jpg"]))
            if im.format != "JPEG" or im.mode != "RGB" or im.size != (256, 256):
                problems.append(f"{path.name}: sample {key} is {im.format} {im.mode} {im.size}")
    return problems


def verify(directory: Path | str, decode: bool = False, progress: bool = False) -> list[str]:
    """Problems found in `directory` (empty if it is exactly what its manifest says)."""
    d = Path(directory)
    try:
        m = load_manifest(d)
    except (OSError, ValueError) as e:
        return [f"cannot read the manifest: {e}"]
    problems, named = [], set()
    entries = [(split, e) for split, s in m["splits"].items() for e in s["shards"]]
    for split, s in m["splits"].items():
        if sum(e["count"] for e in s["shards"]) != s["count"]:
            problems.append(f"{split}: shard counts do not add up to {s['count']}")
    for split, e in tqdm(entries, unit="shard", disable=not progress):
        named.add(e["name"])
        path = d / e["name"]
        if not path.is_file():
            problems.append(f"{e['name']}: missing")
            continue
        problems += _check_shard(path, e, m["classes"], decode)
    strays = sorted(p.name for p in d.glob("*.tar") if p.name not in named)
    problems += [f"{n}: not in the manifest" for n in strays]
    if "stats" in m:
        p = d / STATS
        if not p.is_file():
            problems.append(f"{STATS}: missing")
        elif hashlib.sha256(p.read_bytes()).hexdigest() != m["stats"]["sha256"]:
            problems.append(f"{STATS}: sha256 differs from the manifest")
        else:
            with np.load(p) as z:
                missing = [k for k in STATS_KEYS if k not in z]
                if missing:
                    problems.append(f"{STATS}: lacks {missing}")
                elif int(z["count"]) != m["splits"].get("train", {}).get("count"):
                    problems.append(f"{STATS}: count {int(z['count'])} is not the train count")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_prep.verify", description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--decode", action="store_true", help="also decode every image (slower)")
    a = ap.parse_args(argv)
    problems = verify(a.dir, a.decode, progress=sys.stderr.isatty())
    if problems:
        for p in problems:
            print(f"PROBLEM {p}")
        print(f"verify: {a.dir}: {len(problems)} problems")
        return 1
    m = load_manifest(a.dir)
    print(f"verify: {a.dir} OK: " + ", ".join(f"{s} {v['count']} images in {len(v['shards'])} shards"
                                            for s, v in m["splits"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
