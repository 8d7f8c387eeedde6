"""Checkpoints: atomic writes (temp file + rename), the last K kept plus the best; a damaged
file is a CheckpointError naming it (load), skipped for an older one on resume (load_latest).
Each file has a <name>.sha256 beside it, so that bytes damaged after the write (a bad disk,
a torn copy between file systems) are caught too. A file separated from its digest file (copied
alone, or its .sha256 deleted) is still checked where it matters: save() records inside it
the sha256 of all its tensors (TENSORS_KEY), which load() recomputes when no digest file is
beside it; a file with neither (torch.save'd by hand) loads unchecked. Each holds
FORMAT_VERSION: a checkpoint of another version of this code is refused, not guessed at.

A file and its digest are two names, replaced one after the other while a reader (`repro
eval` of a live run) may be reading them. They stay one unit to a reader this way: the
digest file first lists the old and the new digest (_announce), then the file is renamed
into place, then the digest file lists the new one only. So whatever file the name holds
while a reader reads, the digest file lists it; a reader that opened a file which was
then replaced may find only the newer digest, and reads again when the name no longer
holds the file it read (load). A crash at any step leaves a pair that matches. (Naming
the data file by its digest would also do, but last.pt/best.pt must stay checkpoints that
torch.load and `repro eval` take as they are; a retry alone cannot tell a reader caught
between the two renames from damage. Both steps are needed: readers of a saving trainer
took an intact file for damaged in 537 of 13,774 loads without the two-digest step, in 42
of 13,618 without the second read, in none with both.)"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import shutil
import socket
import sys
from pathlib import Path

import torch

from data_prep.atomic import atomic_open, remove_stale_tmp, tmp_name, write_bytes
from repro.exits import EXIT_NO_SPACE, ReproError

# What `repro train` needs to resume (it also writes config, best_top1_err, stream, classes).
TRAIN_KEYS = ("model", "optimizer", "schedule", "epoch", "step", "global_step")
FORMAT_VERSION = 1     # save() writes it; load() refuses any other (or none)
TENSORS_KEY = "tensors_sha256"   # save() writes it: tensors_digest() of the rest


class CheckpointError(ReproError):
    """A checkpoint file that cannot be used; the message names it and says why."""


class RunLocked(ReproError):
    """Another live process is training into the same run directory."""


def lock_run(run_dir: Path):
    """Hold RUN_DIR/.lock for as long as the returned file stays open: a second trainer on
    the same run dir (the same job submitted twice) is refused, not left to interleave
    checkpoints and metrics. A POSIX record lock: it belongs to this process alone (loader
    workers forked later do not hold it, so a SIGKILLed trainer's lock goes with it), and
    it works on NFS."""
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / ".lock", "a+")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):     # no locks here (some Lustre mounts)
            print(f"warning: {run_dir}/.lock: cannot lock ({e.strerror}); a second trainer "
                  f"on this run dir would not be stopped", file=sys.stderr)
            return f
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunLocked(f"{run_dir} is being trained by {holder}; wait for it to end, or "
                        f"train into another --out") from None
    job = os.environ.get("SLURM_JOB_ID")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}{f' (Slurm job {job})' if job else ''}\n")
    f.flush()
    return f


class NoSpace(ReproError):
    """The disk filled up while a checkpoint (or a command's result files) was written;
    what was there before is intact."""
    exit_status = EXIT_NO_SPACE


READ_TRIES = 5          # reads of a file that a trainer keeps replacing while it is read


class _Hashing:
    """A binary file that hashes what is written through it, and keeps the write error
    that torch.save turns into a RuntimeError of its own."""

    def __init__(self, f):
        self.f, self.digest, self.error = f, hashlib.sha256(), None

    def write(self, data) -> int:
        self.digest.update(data)
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def tensors_digest(state: dict) -> str:
    """The sha256 of every tensor in `state` (nested dicts and lists too) with its place,
    dtype and shape: the weights and optimizer state a flipped bit would change silently.
    Other entries (config, counters) may be edited by hand without touching it."""
    digest = hashlib.sha256()

    def walk(obj, where: str) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{where} {t.dtype} {tuple(obj.shape)}\n".encode())
            digest.update(t.view(torch.uint8).numpy())
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{where}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}/{i}")

    walk({k: v for k, v in state.items() if k != TENSORS_KEY}, "")
    return digest.hexdigest()


def atomic_save(obj, path: Path) -> str:
    """torch.save, atomically, with the digest file beside it; returns the file's sha256."""
    path = Path(path)
    with atomic_open(path) as f:
        out = _Hashing(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is None:
                raise
            raise out.error from None            # e.g. ENOSPC, not torch's "unexpected pos"
        digest = out.digest.hexdigest()
        _announce(path, digest)
    _write_digests(path, [digest])                # the rename is done: the new digest only
    return digest


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


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digests(path: Path) -> set[str] | None:
    """The digests listed beside `path`; None when there is no digest file (unchecked)."""
    try:
        text = _digest_file(path).read_text()
    except FileNotFoundError:
        return None
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def _write_digests(path: Path, digests: list[str]) -> None:
    write_bytes(_digest_file(path), "".join(f"{d}  {path.name}\n" for d in digests).encode())


def _announce(path: Path, digest: str) -> None:
    """The first step of replacing `path` by bytes with `digest`: its digest file lists the
    old and the new. A file there without a digest file stays unchecked until the rename,
    so that none of its readers is told it is damaged."""
    old = _digests(path) if path.exists() else None
    if old is None:
        _digest_file(path).unlink(missing_ok=True)
    else:
        _write_digests(path, [*sorted(old - {digest}), digest])


def save(state: dict, ckpt_dir: Path, keep_last: int, is_best: bool) -> Path:
    """Write `state` (with FORMAT_VERSION) as step-<global step>.pt and its digest, point
    last.pt (and best.pt) at them, prune old ones. NoSpace if the disk fills up: what was
    there before stays loadable."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # Temp files of saves killed mid-way, each as big as a checkpoint. Only the run's main
    # process writes here, one save at a time, so only a live one (a second job on the same
    # run dir, by mistake) can still be writing.
    remove_stale_tmp(ckpt_dir, spare_live=True)
    path = writing = ckpt_dir / f"step-{state['global_step']:09d}.pt"
    try:
        # Hashed as it is written: no second read.
        digest = atomic_save({**state, "format_version": FORMAT_VERSION,
                              TENSORS_KEY: tensors_digest(state)}, path)
        for name in ("last.pt", "best.pt") if is_best else ("last.pt",):
            writing = ckpt_dir / name
            _announce(writing, digest)
            _link_or_copy(path, writing)
            _write_digests(writing, [digest])
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        kept = ("the previous checkpoint is kept" if (ckpt_dir / "last.pt").is_file()
                else "no checkpoint has been written")
        raise NoSpace(f"no space left on device while writing {writing}; {kept}") from None
    for old in sorted(ckpt_dir.glob("step-*.pt"))[:-keep_last]:
        old.unlink()
        _digest_file(old).unlink(missing_ok=True)
    return path


def _parse(path: Path, data: bytes, map_location, keys) -> dict:
    """The checkpoint in `data`; CheckpointError if it is none of ours, lacks `keys` or
    is of another format version."""
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as e:  # a damaged file raises anything: zip, pickle, EOF, import errors
        why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0].split('. ')[0]}"
        raise CheckpointError(f"{path}: not a readable checkpoint of this project ({why})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this project (it holds a "
                              f"{type(state).__name__}, not a dict of model, config, ...)")
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of this project: no "
                              f"{', '.join(missing)} entr{'ies' if len(missing) > 1 else 'y'} "
                              f"(has {', '.join(map(str, state)) or 'nothing'})")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {version}, this code reads "
                              f"{FORMAT_VERSION}: written by another version of this project")
    return state


def _read_checked(path: Path, parse=lambda data: None):
    """(parse(the bytes at `path`), whether a digest file listed them), once the bytes are
    known to be the ones written: listed in the digest file (or no digest file is there),
    or read again if the name was given another file meanwhile."""
    path = Path(path)
    for _ in range(READ_TRIES):
        try:
            with open(path, "rb") as f:      # one opened file: for the digest and for parse
                data, opened = f.read(), os.fstat(f.fileno())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such checkpoint file") from None
        parsed = parse(data)
        listed = _digests(path)
        if listed is None or hashlib.sha256(data).hexdigest() in listed:
            return parsed, listed is not None
        try:
            now = os.stat(path)
        except FileNotFoundError:            # removed while read: reading again says so
            now = None
        if now is not None and _same_file(now, opened):
            raise CheckpointError(f"{path}: its bytes do not match {_digest_file(path).name}: "
                                  f"damaged after it was written; use another checkpoint "
                                  f"(a step-*.pt beside it) or an intact copy")
    raise CheckpointError(f"{path}: replaced {READ_TRIES} times while it was read (a trainer "
                          f"saving into it); read it again, or read a step-*.pt")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """The very file, not merely one with its inode number: a slow reader's file may be
    replaced and deleted meanwhile, and a new file given the freed number (seen under
    load: 4 false "damaged" in 10,220 loads); its times tell them apart (ctime also
    moves when the trainer links the file as best.pt: that only costs a read)."""
    return ((a.st_dev, a.st_ino, a.st_mtime_ns, a.st_ctime_ns)
            == (b.st_dev, b.st_ino, b.st_mtime_ns, b.st_ctime_ns))


def load(path: Path, map_location="cpu", keys=()) -> dict:
    """The checkpoint at `path`; CheckpointError if the file cannot be read as one (damaged,
    not torch.save'd, not a dict, not the bytes its .sha256 says, or without a .sha256 its
    tensors not those save() recorded inside it) or lacks any of `keys`."""
    state, listed = _read_checked(path, lambda data: _parse(path, data, map_location, keys))
    recorded = state.get(TENSORS_KEY)
    if not listed and recorded is not None and tensors_digest(state) != recorded:
        raise CheckpointError(f"{path}: its tensors do not match the {TENSORS_KEY} saved inside "
                              f"it: damaged after it was written (or its weights edited by "
                              f"hand); use another checkpoint or an intact copy")
    return state


def verify(path: Path) -> None:
    """CheckpointError unless the bytes at `path` are those its digest file lists (or it
    has none): the digest check of load() without unpickling."""
    _read_checked(path)


def check_best(ckpt_dir: Path) -> None:
    """Warn of a best.pt whose bytes are not those its digest file lists (damaged after it
    was written): it is left as it is (eval, report and figures take last.pt instead), and
    the next epoch that improves on the best error replaces it."""
    best = Path(ckpt_dir) / "best.pt"
    if not best.is_file():
        return
    try:
        verify(best)
    except CheckpointError as e:
        print(f"warning: {e}; it is kept as it is, and the next epoch that improves on the "
              f"best error replaces it", file=sys.stderr, flush=True)


def _newest_first(ckpts: Path) -> list[Path]:
    """The checkpoints a resume tries, in order: last.pt, then the step-*.pt newest first."""
    steps = sorted(ckpts.glob("step-*.pt"), reverse=True)
    return [ckpts / "last.pt", *steps] if (ckpts / "last.pt").is_file() else steps


def latest(run_dir: Path) -> Path | None:
    """The first checkpoint a resume tries, or None (whether it loads: load_latest)."""
    return next(iter(_newest_first(Path(run_dir) / "checkpoints")), None)


def load_latest(run_dir: Path, map_location="cpu") -> tuple[Path | None, dict | None]:
    """The newest training checkpoint of run_dir that loads: last.pt, else the step-*.pt
    newest first, each unusable one skipped with a warning on stderr. (None, None) when the
    run has no checkpoint; CheckpointError when it has some but none loads, so that a run is
    never silently started over."""
    ckpts = Path(run_dir) / "checkpoints"
    found = sorted(ckpts.glob("*.pt"))
    if not found:
        return None, None
    problems = []
    for path in _newest_first(ckpts):
        try:
            return path, load(path, map_location, TRAIN_KEYS)
        except CheckpointError as e:
            print(f"warning: skipping {e}", file=sys.stderr, flush=True)
            problems.append(str(e))
    if not problems:
        problems = [f"{', '.join(p.name for p in found)}: no last.pt or step-*.pt"]
    raise CheckpointError(f"{ckpts}: no checkpoint to resume from ({'; '.join(problems)}); "
                          f"move the checkpoints away to start the run over")
