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
it) and :func:`class_names` (what to show a person for each class; "words" is optional);
where a directory given as shards has none, :func:`no_manifest` says what to run.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .sources import SPLITS, detect_layouts
from repro.exits import ReproError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATS = "stats.npz"
WORK = ".build"  # a build's resume state inside its --out; removed when the build completes
# build_shards' defaults for the settings: a command that rebuilds them leaves these out
DEFAULT_SHARD_SIZE = 1024
DEFAULT_QUALITY = 95
DEFAULT_SEED = 0


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


def no_manifest(directory: Path | str) -> str:
    """Why `directory` (given as shards) has no manifest.json, and what to run: an
    unfinished build, ImageNet itself given instead of its shards, or nothing built yet.
    The message starts with "<dir>/manifest.json: no manifest.json"."""
    d = Path(directory)
    head = f"{d / MANIFEST}: no manifest.json"
    settings = d / WORK / "settings.json"
    if settings.is_file():
        finished = len(list((d / WORK / "parts").glob("*.json")))
        try:
            command = _command(json.loads(settings.read_text()), d)
        except (ValueError, KeyError):
            command = f"the build_shards command that wrote {settings}"
        return (f"{head}: {d} holds an unfinished build ({finished} shards finished): run the "
                f"same build_shards command to finish it: {command}")
    layouts = detect_layouts(d) if d.is_dir() else []
    if layouts:
        return (f"{head}: {d} is ImageNet itself ({layouts[0]} layout), not its shards: build "
                f"them with `python -m data_prep.build_shards --source {d} --out SHARDS`, then "
                f"give SHARDS")
    missing = "" if d.is_dir() else f" ({d} does not exist)"
    return (f"{head}{missing}; build shards with `python -m data_prep.build_shards --source "
            f"IMAGENET --out {d}`")


def _command(settings: dict, out: Path) -> str:
    """The build_shards command line that gives these settings (defaults left out)."""
    words = ["python -m data_prep.build_shards", f"--source {settings['source']}", f"--out {out}"]
    options = {"--shard-size": (settings["shard_size"], DEFAULT_SHARD_SIZE),
               "--quality": (settings["quality"], DEFAULT_QUALITY),
               "--seed": (settings["seed"], DEFAULT_SEED), "--limit": (settings["limit"], None),
               "--splits": (",".join(settings["splits"]), ",".join(SPLITS))}
    words += [f"{flag} {value}" for flag, (value, default) in options.items() if value != default]
    return "`" + " ".join(words) + "`"
