"""The build's plan: every image of a split in its final order, cut into shards, on disk.

The order: training images by a keyed hash of (seed, key), so that every shard
holds many classes and the order is the same on any platform; val and test by
key. Ties (none, for distinct keys) fall to the key.

Listing ImageNet yields records in any order, and Fall 2011 has ~14M of them, so
the plan is made by an external merge sort: runs of RUN records are sorted in
memory and spilled to temporary files next to the plan, then merged into
``plan-<split>.jsonl`` (one record a line). Memory stays flat in the number of
images: one run, plus a count per class and an (offset, count) per shard. A
worker reads its shard's lines itself (``read_shard``). Duplicate keys meet in
the merge (equal keys sort together) and are an error naming both files.
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from . import atomic
from .sources import Record, SourceError

RUN = 200_000  # records sorted in memory at a time (~100 MB of Python strings)


def shuffle_key(seed: int, key: str) -> bytes:
    """Sort key of the fixed training shuffle: a hash, so it is the same on every platform and version."""
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=16).digest()


@dataclass
class Plan:
    path: Path
    shards: list[tuple[int, int]]  # (byte offset in `path`, record count) of each shard
    digest: str  # sha256 of the keys and labels, shard by shard: what a resume must match
    listed: int  # records the source listed (before --limit)
    per_class: Counter  # wnid -> records listed


def _line(r: Record, split: str, seed: int) -> str:
    """A record as a line that sorts into plan order as a plain string: hash (train), key,
    then the record. Keys are printable (checked when listed), so hold no tab or newline."""
    order = shuffle_key(seed, r.key).hex() if split == "train" else ""
    return f"{order}\t{r.key}\t{r.wnid}\t{json.dumps(list(r[3:]))}\n"


def _runs(records: Iterable[Record], split: str, seed: int, spill: Path, per_class: Counter):
    """Sorted runs: the last (or only) one as a list in memory, the others as files."""
    files, run = [], []
    for r in records:
        per_class[r.wnid] += 1
        run.append(_line(r, split, seed))
        if len(run) == RUN:
            files.append(atomic.tmp_name(spill.with_name(f"{spill.name}-{len(files)}")))
            with open(files[-1], "w", encoding="utf-8", newline="\n") as f:
                f.writelines(sorted(run))
            run = []
    return files, sorted(run)


def write_plan(records: Iterable[Record], split: str, path: Path, shard_size: int, seed: int,
               limit: int | None) -> Plan:
    """Sort `records` into plan order and write the first `limit` to `path`, shard by shard."""
    per_class, shards, dup_count, dups = Counter(), [], 0, []
    digest, offset, prev = hashlib.sha256(), 0, None
    files, last = _runs(records, split, seed, path.with_name(f"sort-{split}"), per_class)
    try:
        with contextlib.ExitStack() as stack, atomic.atomic_open(path) as out:
            runs = [stack.enter_context(open(f, encoding="utf-8", newline="\n")) for f in files]
            for n, line in enumerate(heapq.merge(*runs, last)):
                _, key, wnid, rest = line.split("\t", 3)
                if prev is not None and key == prev[1]:
                    dup_count += 1
                    dups += [(prev[0], line)] if len(dups) < 5 else []
                prev = (line, key)
                if limit is not None and n >= limit:
                    continue
                if n % shard_size == 0:
                    if shards:
                        digest.update(b"--\n")
                    shards.append((offset, 0))
                data = f'["{split}", {json.dumps(key)}, {json.dumps(wnid)}, {rest[1:]}'.encode()
                out.write(data)
                offset += len(data)
                shards[-1] = (shards[-1][0], shards[-1][1] + 1)
                digest.update(f"{key}\t{wnid}\n".encode())
            if shards:
                digest.update(b"--\n")
    finally:
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f)
    if dup_count:
        _duplicates(split, dup_count, dups)
    return Plan(path, shards, digest.hexdigest(), sum(per_class.values()), per_class)


def _duplicates(split: str, count: int, pairs: list[tuple[str, str]]) -> None:
    origin = lambda line: json.loads(line.split("\t", 3)[3])[-1]  # noqa: E731
    named = [f"{origin(a)} and {origin(b)}" for a, b in pairs]
    raise SourceError(f"{split}: {count} file names occur twice (a file's stem is its "
                      f"sample key, which must be unique): {'; '.join(named)}")


def read_shard(path: Path | str, offset: int, count: int) -> list[Record]:
    """The records of one shard of the plan file at `path`."""
    with open(path, "rb") as f:
        f.seek(offset)
        return [Record(*json.loads(f.readline())) for _ in range(count)]
