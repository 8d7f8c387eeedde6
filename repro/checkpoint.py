"""Checkpoints: atomic writes (temp file + rename), the last K kept plus the best."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:
        tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


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
