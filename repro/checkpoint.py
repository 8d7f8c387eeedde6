"""Checkpoints: atomic writes (temp file + rename), the last K kept plus the best."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch

from data_prep.atomic import atomic_open, tmp_name


def atomic_save(obj, path: Path) -> None:
    with atomic_open(path) as f:
        torch.save(obj, f)


def _link_or_copy(src: Path, dst: Path) -> None:
    """dst becomes src's content atomically: a hard link, or a streamed copy."""
    tmp = tmp_name(dst)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with atomic_open(dst) as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out)


def save(state: dict, ckpt_dir: Path, keep_last: int, is_best: bool) -> Path:
    """Write step-<global step>.pt, point last.pt (and best.pt) at it, prune old ones."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step-{state['global_step']:09d}.pt"
    atomic_save(state, path)
    _link_or_copy(path, ckpt_dir / "last.pt")
    if is_best:
        _link_or_copy(path, ckpt_dir / "best.pt")
    for old in sorted(ckpt_dir.glob("step-*.pt"))[:-keep_last]:
        old.unlink()
    return path


def load(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=False)


def latest(run_dir: Path) -> Path | None:
    last = Path(run_dir) / "checkpoints" / "last.pt"
    return last if last.is_file() else None
