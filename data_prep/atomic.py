"""Files that are either absent or complete under their final name.

Everything is written to ``<name>.tmp-<host>-<pid>`` in the same directory,
flushed and fsynced, then ``os.replace``d onto the final name (atomic on POSIX).
A build or checkpoint save killed at any moment leaves at worst a stale
``*.tmp-*`` file, which the next run removes with :func:`remove_stale_tmp`.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from pathlib import Path

from repro.exits import ReproError

TMP_MARK = ".tmp-"


class OutputError(ReproError, ValueError):
    """An output path that cannot be written as asked (the message says why)."""


def check_output(path: str | Path, directory: bool) -> Path:
    """Refuse an output path that cannot be written, before any work is done: an existing
    file where a directory is wanted or the other way round, or no way to create it."""
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a directory")
    if not directory and path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    parent = path if directory else path.parent
    existing = next(p for p in (parent.absolute(), *parent.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{existing}: is not a directory, so {path} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{existing}: not writable, so {path} cannot be written")
    return path


def tmp_name(path: Path) -> Path:
    # Host and pid: array tasks on several nodes may write into one shared directory.
    return path.with_name(f"{path.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path | str):
    """Open a binary file for writing that appears under `path` only if the block succeeds."""
    path = Path(path)
    tmp = tmp_name(path)
    f = open(tmp, "wb")
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: Path | str, data: bytes) -> None:
    write_set({Path(path): data})


def write_json(path: Path | str, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def write_set(files: dict[Path, bytes]) -> None:
    """Write files that belong together: every one to its temp name first, then all renamed.
    A failure while writing (disk full, no permission, a directory in the way) leaves the
    old set untouched; only the renames, each atomic, could be cut off between them. An
    OSError names the final path, not the temp file."""
    files = {Path(p): data for p, data in files.items()}
    pending = {}                                    # final path -> its written temp file
    path = next(iter(files), None)
    try:
        for path, data in files.items():
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "a directory is in the way", str(path))
            tmp = tmp_name(path)
            with open(tmp, "wb") as f:
                pending[path] = tmp                 # ours to remove if anything fails
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for path in list(pending):
            os.replace(pending.pop(path), path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        for tmp in pending.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    for directory in {p.parent for p in files}:
        _fsync_dir(directory)


def _writer_alive(p: Path) -> bool:
    """Whether the temp file `p` is still being written by a live process on this host
    (not this process: the caller of remove_stale_tmp writes nothing there meanwhile)."""
    host, _, pid = p.name.rpartition(TMP_MARK)[2].rpartition("-")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # alive, another user's
        pass
    return True


def remove_stale_tmp(directory: Path | str, spare_live: bool = False) -> int:
    """Delete the ``*.tmp-*`` files left in `directory` by killed writers (SIGKILL, node
    failure); returns how many. With `spare_live`, a temp file that a live process on
    this host is still writing is kept (a build instead discards what the workers of a
    killed build may still be finishing: it rewrites the same bytes itself). Call it when
    this process is writing nothing into `directory`."""
    n = 0
    directory = Path(directory)
    if directory.is_dir():
        for p in directory.iterdir():
            if TMP_MARK in p.name and p.is_file() and not (spare_live and _writer_alive(p)):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    n += 1
    return n
