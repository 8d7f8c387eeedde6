"""A split's shards, as the manifest lists them (data_prep.manifest is the format)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_prep.build_shards import no_manifest
from data_prep.manifest import MANIFEST, ShardsError, load_manifest


@dataclass(frozen=True)
class Shard:
    path: str
    count: int


def read_manifest(shards_dir: str | Path) -> dict:
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(no_manifest(shards_dir))
    return load_manifest(shards_dir)


def split_shards(shards_dir: str | Path, split: str) -> list[Shard]:
    manifest = read_manifest(shards_dir)
    if split not in manifest["splits"]:
        raise FileNotFoundError(f"{Path(shards_dir) / MANIFEST}: no '{split}' split "
                                f"(built with --splits {','.join(manifest['splits'])})")
    entries = manifest["splits"][split]["shards"]
    if not entries:
        raise ShardsError(f"{Path(shards_dir) / MANIFEST}: lists no {split} shards")
    return [Shard(str(Path(shards_dir) / e["name"]), int(e["count"])) for e in entries]
