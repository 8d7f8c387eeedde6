"""A split's shards, as the manifest lists them (data_prep.manifest is the format)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_prep.manifest import (MANIFEST, ShardsError, file_sha256, load_manifest, no_manifest,
                                stats_digest)
from data_prep.sources import LAYOUT_SPLITS


@dataclass(frozen=True)
class Shard:
    path: str
    count: int


def read_manifest(shards_dir: str | Path) -> dict:
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise ShardsError(no_manifest(shards_dir))
    return load_manifest(shards_dir)


def split_shards(shards_dir: str | Path, split: str) -> list[Shard]:
    manifest = read_manifest(shards_dir)
    if split not in manifest["splits"]:
        layout = manifest.get("settings", {}).get("layout")
        if layout in LAYOUT_SPLITS and split not in LAYOUT_SPLITS[layout]:
            have = [name for name, splits in LAYOUT_SPLITS.items() if split in splits]
            raise ShardsError(f"{Path(shards_dir) / MANIFEST}: no '{split}' split: the {layout} "
                              f"layout has no labelled {split} images (only {', '.join(have)} "
                              f"has; these shards have {', '.join(manifest['splits'])})")
        raise ShardsError(f"{Path(shards_dir) / MANIFEST}: no '{split}' split "
                          f"(built with --splits {','.join(manifest['splits'])})")
    entries = manifest["splits"][split]["shards"]
    if not entries:
        raise ShardsError(f"{Path(shards_dir) / MANIFEST}: lists no {split} shards")
    return [Shard(str(Path(shards_dir) / e["name"]), int(e["count"])) for e in entries]


def data_fingerprint(shards_dir: str | Path) -> dict:
    """What a checkpoint records of the shards it was trained on: the sha256 of manifest.json
    (the shard set) and of stats.npz (the mean image and PCA its inputs were normalised with,
    checked against the manifest: ShardsError if it is not the one the build wrote)."""
    manifest = read_manifest(shards_dir)
    return {"manifest_sha256": file_sha256(Path(shards_dir) / MANIFEST),
            "stats_sha256": stats_digest(shards_dir, manifest)}
