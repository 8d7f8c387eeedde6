"""manifest.json: what a shard directory holds, and how to check it later.

::

    {"format_version": 1,
     "settings": {...everything that changes the bytes: source, layout, quality, shard_size,
                  seed, limit, splits, image pipeline, Pillow version...},
     "classes": ["n01440764", ...],           # index -> wnid, sorted WNID order
     ["words": ["tench, Tinca tinca", ...],]  # parallel to classes, where the source names
                                              # them (devkit meta.mat, LOC_synset_mapping.txt)
     "splits": {"train": {"count": N, "shards": [{"name", "count", "sha256", "bytes"}],
                          "skipped": [{"key", "path", "reason"}],
                          "converted": [{"key", "path", "notes"}],
                          "source_count": M, "expected_count": E, "expected_from": "...",
                          "ignored_files": 0, "plan_sha256": "...",
                          ["count_warning": "...", "class_count_mismatch": {wnid: {...}}]},
                "val": {...}, ["test": {...}]},             # test: ILSVRC-2010 only
     "stats": {"file": "stats.npz", "sha256": "...", "count": N}}

It carries no timings or worker counts, so the same source and settings give
the same manifest. Readers: :func:`load_manifest` (repro.data.shards lists the shards from
it) and :func:`class_names` (what to show a person for each class; "words" is optional).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from repro.exits import ReproError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATS = "stats.npz"
WORK = ".build"  # a build's resume state inside its --out; removed when the build completes


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


class ShardsError(ReproError, ValueError):
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


def class_names(manifest: dict) -> list[str]:
    """A person's name for each class index: the source's words ("tench, Tinca tinca")
    where the manifest has them (a folder tree names no class, and older manifests
    predate the key), else the WNID."""
    return manifest.get("words") or manifest["classes"]


def file_sha256(path: Path | str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def stats_digest(directory: Path | str, manifest: dict) -> str:
    """The sha256 of DIR/stats.npz; ShardsError if it is missing, or is not the file whose
    sha256 the manifest records (damaged or replaced after the build)."""
    path = Path(directory) / STATS
    if not path.is_file():
        raise ShardsError(f"{path}: missing (the mean image and PCA); run build_shards with "
                          f"the same arguments again: it rebuilds it")
    digest = file_sha256(path)
    recorded = manifest.get("stats", {}).get("sha256")
    if recorded and digest != recorded:
        raise ShardsError(f"{path}: not the file the build wrote (its sha256 differs from "
                          f"{MANIFEST}'s); run build_shards with the same arguments again: "
                          f"it rebuilds it")
    return digest
