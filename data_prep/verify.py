"""python -m data_prep.verify DIR: check a shard directory against its manifest.

Re-hashes every shard and stats.npz, reads every tar header to count samples
and check that each has jpg/cls/wnid with a class index that matches the
class list, and flags shard files the manifest does not name. ``--decode``
also fully decodes every JPEG and checks it is RGB at the manifest's image size
(256x256). Exit status 0 if all is well, 1 with a list of problems otherwise,
2 if DIR holds no manifest.json (the message says what it holds instead); bad
bytes anywhere are reported as problems naming the shard and sample, never
raised.
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

from repro.exits import EXIT_DONE, EXIT_PROBLEMS, entry_point
from .image import DECODE_ERRORS, error_text
from .manifest import MANIFEST, STATS, ShardsError, file_sha256, load_manifest, no_manifest
from .progress import Progress
from .stats import STATS_KEYS

EXTS = ("cls", "jpg", "wnid")


def _check_image(jpg: bytes, size: int) -> str | None:
    """What is wrong with one sample's JPEG bytes, or None. Decodes every pixel: Image.open
    alone reads only the header, so a truncated JPEG would pass."""
    try:
        with Image.open(io.BytesIO(jpg)) as im:
            im.load()
            if im.format != "JPEG" or im.mode != "RGB" or im.size != (size, size):
                return f"is {im.format} {im.mode} {im.size[0]}x{im.size[1]}, expected JPEG RGB {size}x{size}"
    except DECODE_ERRORS as e:
        return f"does not decode ({error_text(e)})"
    return None


def _check_sample(s: dict[str, bytes], classes: list[str], decode: bool, size: int) -> list[str]:
    """What is wrong with one sample {ext: bytes}; bad bytes are reported, never raised."""
    problems = []
    try:
        cls = int(s["cls"].decode("ascii"))
    except ValueError:  # UnicodeDecodeError is a ValueError
        cls = None
        problems.append(f"cls is not an integer: {s['cls'][:40]!r}")
    try:
        wnid = s["wnid"].decode("utf-8")
    except UnicodeDecodeError:
        wnid = None
        problems.append(f"wnid is not UTF-8 text: {s['wnid'][:40]!r}")
    if cls is not None and wnid is not None and (not 0 <= cls < len(classes) or classes[cls] != wnid):
        problems.append(f"has cls {cls} but wnid {wnid}")
    if decode:
        bad = _check_image(s["jpg"], size)
        if bad:
            problems.append(f"jpg {bad}")
    return problems


def _check_shard(path: Path, entry: dict, classes: list[str], decode: bool, size: int) -> list[str]:
    problems = []
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        problems.append(f"{path.name}: sha256 differs from the manifest")
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                if not m.isfile():  # extractfile() gives None for links and directories
                    problems.append(f"{path.name}: member {m.name} is not a regular file")
                    continue
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
        problems += [f"{path.name}: sample {key} {p}" for p in _check_sample(s, classes, decode, size)]
    return problems


def verify(directory: Path | str, decode: bool = False, progress: str = "off") -> list[str]:
    """Problems found in `directory` (empty if it is exactly what its manifest says);
    progress: a data_prep.progress mode."""
    d = Path(directory)
    try:
        m = load_manifest(d)
    except (OSError, ValueError) as e:
        return [f"cannot read the manifest: {e}"]
    problems, named = [], set()
    size = m["settings"]["image"]["size"]     # what the build cropped to
    entries = [(split, e) for split, s in m["splits"].items() for e in s["shards"]]
    if "words" in m and len(m["words"]) != len(m["classes"]):
        problems.append(f"words: {len(m['words'])} names for {len(m['classes'])} classes")
    for split, s in m["splits"].items():
        if sum(e["count"] for e in s["shards"]) != s["count"]:
            problems.append(f"{split}: shard counts do not add up to {s['count']}")
    with Progress(len(entries), "verify", "shards", progress) as bar:
        for split, e in entries:
            named.add(e["name"])
            path = d / e["name"]
            if path.is_file():
                problems += _check_shard(path, e, m["classes"], decode, size)
            else:
                problems.append(f"{e['name']}: missing")
            bar.update()
    strays = sorted(p.name for p in d.glob("*.tar") if p.name not in named)
    problems += [f"{n}: not in the manifest" for n in strays]
    if "stats" in m:
        p = d / STATS
        if not p.is_file():
            problems.append(f"{STATS}: missing")
        elif file_sha256(p) != m["stats"]["sha256"]:
            problems.append(f"{STATS}: sha256 differs from the manifest")
        else:
            with np.load(p) as z:
                missing = [k for k in STATS_KEYS if k not in z]
                if missing:
                    problems.append(f"{STATS}: lacks {missing}")
                elif int(z["count"]) != m["splits"].get("train", {}).get("count"):
                    problems.append(f"{STATS}: count {int(z['count'])} is not the train count")
    return problems


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_prep.verify", description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--decode", action="store_true", help="also decode every image (slower)")
    a = ap.parse_args(argv)
    if not (Path(a.dir) / MANIFEST).is_file():    # not shards at all: bad input, not a verdict
        raise ShardsError(no_manifest(a.dir))
    problems = verify(a.dir, a.decode, progress="auto")
    if problems:
        for p in problems:
            print(f"PROBLEM {p}")
        print(f"verify: {a.dir}: {len(problems)} problems")
        return EXIT_PROBLEMS
    m = load_manifest(a.dir)
    print(f"verify: {a.dir} OK: " + ", ".join(f"{s} {v['count']} images in {len(v['shards'])} shards"
                                            for s, v in m["splits"].items()))
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
