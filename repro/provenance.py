"""Where a run's data came from, recorded with every run: real files or a generated
stand-in, and each file's sha256, so that a number can be traced to the bytes it was
measured on.

A generator leaves MARKER beside what it writes (one line: what wrote the files, with
which seed and sizes); a folder without it holds real data as far as this project
knows. Nothing here decides what is real by content: the checksums are recorded so
that a reader can compare them with the published ones.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

MARKER = "GENERATED"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fresh_folder(folder: Path, refuse: type[Exception]) -> Path:
    """folder, created, for a generator to write into; `refuse` raised when it holds
    files, which the stand-in would overwrite."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise refuse(f"{folder} is not empty: --generate writes only where no data set is "
                     f"(it would overwrite the files there)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def mark_generated(folder: Path, what: str) -> None:
    """Leave the marker in folder, saying what wrote the files there."""
    (Path(folder) / MARKER).write_text(what.rstrip("\n") + "\n")


def record(folder: Path, files: list[Path]) -> dict:
    """{"data": "real" | "generated", "files": {name: sha256}} for files, read from folder;
    with the marker's line as "generated_by" when there is one."""
    marker = Path(folder) / MARKER
    out = {"data": "generated" if marker.is_file() else "real",
           "files": {Path(f).name: sha256(Path(f)) for f in files}}
    if marker.is_file():
        out["generated_by"] = marker.read_text().strip()
    return out
