"""A WebDataset shard written byte-for-byte deterministically, hashed as it is written.

Samples are ``<key>.cls`` (ASCII class index), ``<key>.jpg``, ``<key>.wnid``, in
that order. Tar headers carry nothing that varies between runs or machines:
mtime 0, uid/gid 0, empty user/group names, mode 0444, GNU format (long keys get a deterministic long-name header).
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from . import atomic


class _HashingWriter:
    def __init__(self, f):
        self.f, self.sha, self.pos = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos


def _info(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, 0, 0o444
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


class ShardWriter:
    """``with ShardWriter(path) as w: w.add(key, jpg, cls, wnid)``; the file appears only when complete."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.count = 0

    def __enter__(self):
        self._ctx = atomic.atomic_open(self.path)
        self._hw = _HashingWriter(self._ctx.__enter__())
        self._tar = tarfile.open(fileobj=self._hw, mode="w", format=tarfile.GNU_FORMAT)
        return self

    def add(self, key: str, jpg: bytes, cls: int, wnid: str) -> None:
        for ext, data in (("cls", str(cls).encode()), ("jpg", jpg), ("wnid", wnid.encode())):
            self._tar.addfile(_info(f"{key}.{ext}", len(data)), io.BytesIO(data))
        self.count += 1

    def __exit__(self, *exc):
        if exc[0] is None:
            self._tar.close()  # writes the end-of-archive blocks through the hashing writer
        self.sha256 = self._hw.sha.hexdigest()
        self.size = self._hw.pos
        return self._ctx.__exit__(*exc)
