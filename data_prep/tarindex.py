"""Where every member's bytes lie inside an uncompressed tar, nested tars included.

ILSVRC2012_img_train.tar holds 1000 inner <wnid>.tar files. Indexing the outer
tar, then each inner tar through a window onto the outer file, gives every
image's absolute (offset, size), so images are read with one ``os.pread``
each: random access, in parallel, with nothing extracted to disk.
"""
from __future__ import annotations

import io
import os
import tarfile
from typing import NamedTuple


class Member(NamedTuple):
    name: str
    offset: int  # absolute byte offset of the member's data in the file
    size: int


class _Window(io.RawIOBase):
    """A read-only, seekable view of bytes [start, start + size) of an open file."""

    def __init__(self, fd: int, start: int, size: int):
        self.fd, self.start, self.size, self.pos = fd, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self.size - self.pos))
        data = os.pread(self.fd, n, self.start + self.pos) if n else b""
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


def index_tar(path: str, start: int = 0, size: int | None = None) -> list[Member]:
    """Regular-file members of the tar at bytes [start, start+size) of `path`, in tar order."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if size is None:
            size = os.fstat(fd).st_size - start
        raw = io.BufferedReader(_Window(fd, start, size), buffer_size=4096)
        with tarfile.open(fileobj=raw, mode="r:") as tar:
            return [Member(m.name, start + m.offset_data, m.size) for m in tar if m.isfile()]
    finally:
        os.close(fd)


_fds: dict[str, int] = {}


def read_at(path: str, offset: int, size: int) -> bytes:
    """`size` bytes at `offset` of `path`; the file stays open for the life of the process."""
    fd = _fds.get(path)
    if fd is None:
        fd = _fds[path] = os.open(path, os.O_RDONLY)
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(f"{path}: short read at {offset} ({len(data)} of {size} bytes)")
    return data
