"""A WebDataset shard written byte-for-byte deterministically, hashed as it is written.

Samples are ``<key>.cls`` (ASCII class index), ``<key>.jpg``, ``<key>.wnid``, in
that order. Tar headers carry nothing that varies between runs or machines:
mtime 0, uid/gid 0, empty user/group names, mode 0444, GNU format (a key too
long for a plain header gets a GNU long-name record, equally deterministic).
Headers are exactly ``tarfile.TarInfo.tobuf``'s; the archive ends as
``tarfile`` ends one (two zero blocks, padded to a 10240-byte record).

``read_samples`` reads shards back for training with ``tarindex.members``, ~8x
faster than the tarfile module that webdataset's reader uses (20 vs 170 us a
sample, measured), and skips unwanted samples without reading their data. It
reads any ustar, GNU or pax tar, not only ours.
"""
from __future__ import annotations

import hashlib
import re
import tarfile
from pathlib import Path

from . import atomic
from .tarindex import TarError, members

BLOCK, RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE


def _tobuf(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, 0, 0o444
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


_TEMPLATE = _tobuf("x", 0)


def member_header(name: str, size: int) -> bytes:
    """The tar header ``tarfile`` writes for this member, built ~5x faster from a template."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) >= 100 or size >= 8**11:
        return _tobuf(name, size)  # GNU long-name record / huge size: let tarfile do it
    h = bytearray(_TEMPLATE)
    h[0:100] = raw.ljust(100, b"\0")
    h[124:136] = b"%011o\0" % size
    h[148:156] = b" " * 8
    h[148:155] = b"%06o\0" % sum(h)
    return bytes(h)


class ShardWriter:
    """``with ShardWriter(path) as w: w.add(key, jpg, cls, wnid)``; the file appears only when complete."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.count = 0

    def __enter__(self):
        self._ctx = atomic.atomic_open(self.path)
        self._f = self._ctx.__enter__()
        self._sha = hashlib.sha256()
        self.size = 0
        return self

    def _write(self, b: bytes) -> None:
        self._f.write(b)
        self._sha.update(b)
        self.size += len(b)

    def add(self, key: str, jpg: bytes, cls: int, wnid: str) -> None:
        for ext, data in (("cls", str(cls).encode()), ("jpg", jpg), ("wnid", wnid.encode())):
            self._write(member_header(f"{key}.{ext}", len(data)))
            self._write(data)
            if len(data) % BLOCK:
                self._write(bytes(BLOCK - len(data) % BLOCK))
        self.count += 1

    def __exit__(self, *exc):
        if exc[0] is None:
            self._write(bytes(2 * BLOCK))
            if self.size % RECORD:
                self._write(bytes(RECORD - self.size % RECORD))
        self.sha256 = self._sha.hexdigest()
        return self._ctx.__exit__(*exc)


# webdataset's split of a member name into sample key and extension
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def read_samples(path: str | Path, start: int = 0, stop: int | None = None):
    """Samples [start, stop) of a WebDataset shard as dicts {"__key__": key, "__url__":
    path, ext: bytes}, grouped as webdataset groups them (its key/extension split,
    extensions lower-cased, names without an extension skipped). Samples before `start`
    are skipped without reading their data; a truncated shard, or one that ends before
    `stop`, is an error."""
    index, key, sample = -1, None, {}
    with open(path, "rb", buffering=1 << 20) as f:
        for name, size, padded in members(f, path):
            parts = _KEY_EXT.match(name)
            if parts is None:
                f.seek(padded, 1)
                continue
            if parts[1] != key:
                if start <= index:
                    yield sample
                index, key = index + 1, parts[1]
                if stop is not None and index >= stop:
                    return
                sample = {"__key__": key, "__url__": str(path)}
            if index < start:
                f.seek(padded, 1)
                continue
            ext = parts[2].lower()
            if ext in sample:
                raise TarError(f"{path}: sample {key} has two {ext} members")
            sample[ext] = f.read(size)          # no padded copy to slice: the data once
            f.seek(padded - size, 1)
    if start <= index:
        yield sample
    if stop is not None and index + 1 < stop:
        raise TarError(f"{path}: holds {index + 1} samples, {stop} expected (manifest out of date?)")
