"""manifest.json: what a shard directory holds, and how to check it later.

::

    {"format_version": 1,
     "settings": {...everything that changes the bytes: source, layout, quality, shard_size,
                  seed, limit, splits, image pipeline, Pillow version...},
     "classes": ["n01440764", ...],           # index -> wnid, sorted WNID order
     ["class_names": ["tench, Tinca tinca", ...],]  # index -> the devkit's (or Kaggle's)
                                              # words; absent when the source has none
     "splits": {"train": {"count": N, "shards": [{"name", "count", "sha256", "bytes"}],
                          "skipped": [{"key", "path", "reason"}],
                          "converted": [{"key", "path", "notes"}],
                          "source_count": M, "expected_count": E, "expected_from": "...",
                          "ignored_files": 0, "plan_sha256": "...",
                          ["count_warning": "...", "class_count_mismatch": {wnid: {...}}]},
                "val": {...}},
     "stats": {"file": "stats.npz", "sha256": "...", "count": N}}

It carries no timings or worker counts, so the same source and settings give
the same manifest. Reader: :func:`load_manifest` (repro.data.shards lists the shards from it).
"""
from __future__ import annotations

import json
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATS = "stats.npz"
WORK = ".build"  # a build's resume state inside its --out; removed when the build completes


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


class ShardsError(ValueError):
    """A shard directory's files cannot be used as they are (the message names the file)."""


def load_manifest(directory: Path | str) -> dict:
    path = Path(directory) / MANIFEST
    try:
        with open(path) as f:
            m = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardsError(f"{path}: not a readable manifest ({e}); rerun build_shards") from None
    version = m.get("format_version") if isinstance(m, dict) else None
    if version != FORMAT_VERSION:
        raise ShardsError(f"{path}: format_version {version}, this code reads {FORMAT_VERSION}")
    return m



