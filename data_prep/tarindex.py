"""Where every member's bytes lie inside an uncompressed tar, nested tars included.

ILSVRC2012_img_train.tar holds 1000 inner <wnid>.tar files. Indexing the outer
tar, then each inner tar through a window onto the outer file, gives every
image's absolute (offset, size), so images are read with one ``os.pread``
each: random access, in parallel, with nothing extracted to disk.

``members`` parses the tar headers itself (ustar, GNU and pax; checksums and
truncation checked): indexing a 1,000-member tar is 1.15-1.25x faster than
tarfile's ``getmembers`` and ``offset_data`` (BENCHMARKS.md: tools/tarindex_bench.py);
the shard reader (``shardfile.read_samples``) uses it too, ~8x faster than tarfile there.
``cached_index`` streams the index of many tars (21,841 inner tars for Fall
2011) and caches it on disk, never holding it all in memory.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Iterator, NamedTuple

from repro.exits import ReproError

from . import atomic

BLOCK = 512


class TarError(ReproError, ValueError):
    """A tar that cannot be read (the message names the file and the byte offset)."""


class TarMember(NamedTuple):
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


def _number(field: bytes) -> int:
    if field[0] & 0x80:                       # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def members(f, path):
    """(name, size, padded size) of each regular file in tar order. The caller reads or
    seeks past each file's padded data before asking for the next."""
    long_name = None
    while True:
        offset = f.tell()
        header = f.read(BLOCK)
        if header == bytes(BLOCK):                 # the end-of-archive block
            return
        if len(header) < BLOCK:
            raise TarError(f"{path}: truncated: ends at byte {offset} inside a member or "
                             f"without the tar end-of-archive blocks")
        try:
            size, checksum = _number(header[124:136]), _number(header[148:156])
        except ValueError:
            raise TarError(f"{path}: not a tar header at byte {offset}") from None
        unsigned = sum(header[:148]) + 256 + sum(header[156:])
        if checksum != unsigned and checksum != (          # tarfile accepts the signed sum too
                unsigned - 256 * sum(b > 127 for b in header[:148] + header[156:])):
            raise TarError(f"{path}: bad tar header checksum at byte {offset}")
        kind, padded = header[156:157], size + (-size % BLOCK)
        if kind in (b"0", b"\0", b"7"):
            name = long_name or header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0]
            if long_name is None and header[257:263] == b"ustar\0" and prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
            long_name = None
            yield name, size, padded
            continue
        data = f.read(padded)
        if len(data) < padded:
            raise TarError(f"{path}: truncated: ends inside the member at byte {offset}")
        if kind == b"L":                           # GNU long name of the next member
            long_name = data[:size].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind == b"x":                         # pax header of the next member: its path
            for record in data[:size].split(b"\n"):
                if b" path=" in record:
                    long_name = record.split(b" path=", 1)[1].decode("utf-8", "surrogateescape")
        elif kind not in (b"K", b"g"):             # a directory, link...: it had its own name
            long_name = None


def index_tar(path: str, start: int = 0, size: int | None = None) -> list[TarMember]:
    """Regular-file members of the tar at bytes [start, start+size) of `path`, in tar order."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if size is None:
            size = os.fstat(fd).st_size - start
        raw = io.BufferedReader(_Window(fd, start, size), buffer_size=1 << 16)
        out = []
        for name, size, padded in members(raw, path):
            out.append(TarMember(name, start + raw.tell(), size))
            raw.seek(padded, 1)
        return out
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


# ---- an index of many tars, streamed and cached ------------------------------------------
class Part(NamedTuple):
    """A tar to index: a file, or the window [start, start + size) of one (an inner tar)."""
    path: str
    start: int
    size: int | None
    label: str | None  # prefix of its members' names ("n01440764.tar"), None for none


def inner_tars(path: str) -> list[Part]:
    """The inner tars of a tar of tars (ILSVRC's train tars, fall11_whole.tar), in tar order."""
    return [Part(path, m.offset, m.size, m.name) for m in index_tar(path) if m.name.endswith(".tar")]


def index_part(part: Part) -> list[TarMember]:
    prefix = f"{part.label}/" if part.label else ""
    try:
        return [TarMember(prefix + m.name, m.offset, m.size) for m in index_tar(part.path, part.start, part.size)]
    except TarError as e:
        if part.label is None:
            raise
        # the byte offset in the message counts from the inner tar's start
        raise TarError(f"{e} of its inner tar {part.label} (which starts at byte {part.start})") from None


def stamp(paths: list[str]) -> str:
    """What the cache must have been made from: each tar's path, size and mtime."""
    stats = [(str(Path(p).resolve()), os.stat(p)) for p in paths]
    text = " ".join(f"{p} {st.st_size} {st.st_mtime_ns}" for p, st in stats)
    if len(stats) > 1:  # a folder of tars: one line all the same
        text = hashlib.sha256(text.encode()).hexdigest()
    return f"# {text}\n"


def cached_index(parts, cache: Path | None, mark: str, imap=map) -> Iterator[TarMember]:
    """The members of every part, part after part, streamed: from `cache` when its first
    line is `mark` (see `stamp`), else indexed (parts in parallel through `imap`, an ordered
    map) and written to it as they pass. `parts` is a callable, only called on a miss."""
    if cache and cache.exists():
        with open(cache, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
            if f.readline() == mark:
                for line in f:
                    name, offset, size = line.rstrip("\n").rsplit("\t", 2)
                    yield TarMember(name, int(offset), int(size))
                return
    if cache is None:
        for members in imap(index_part, parts()):
            yield from members
        return
    with atomic.atomic_open(cache) as f:  # complete, or not there at all
        f.write(mark.encode())
        for members in imap(index_part, parts()):
            f.write("".join(f"{m.name}\t{m.offset}\t{m.size}\n" for m in members)
                    .encode("utf-8", "surrogateescape"))
            yield from members
