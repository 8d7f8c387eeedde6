"""python -m data_prep.build_shards --source PATH --out DIR: ImageNet -> WebDataset shards + stats.

The build, top to bottom:

1. detect the source layout (sources.py) and refuse an --out that holds a
   build with other settings;
2. plan (plan.py): list every image; order train by a keyed hash of (seed,
   key) so a shard holds many classes, val and test by key; take --limit; cut
   into shards. The plan is fixed by source and settings alone, and kept on
   disk (.build/plan-SPLIT.jsonl), so memory stays flat in the number of images;
3. build each shard not yet finished, one whole shard per worker process:
   decode -> 256x256 (image.py) -> JPEG -> tar (shardfile.py), with exact
   per-shard statistics sums for train (stats.py); each shard and its sidecar
   (.build/parts/NAME.json, .npz) are written atomically, so a killed build
   resumes where it stopped;
4. merge the sums into stats.npz, write manifest.json last, print a summary.

A build can be split over processes or machines sharing --out (slurm/build_shards.sbatch,
a job array): `--part I --parts N` builds only the shards whose index within their split
is I mod N, and whichever part finds every shard finished does step 4, so the result is
byte for byte the single-process build's. Parts run side by side (a shared lock keeps out
a whole build); a part or a whole build run again finishes only what is missing.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import PIL

from repro import provenance
from repro.exits import EXIT_DONE, EXIT_INTERRUPTED, EXIT_TERMINATED, ReproError, entry_point
from . import atomic, image
from . import fall2011
from .manifest import (DEFAULT_QUALITY, DEFAULT_SEED, DEFAULT_SHARD_SIZE, FORMAT_VERSION, MANIFEST,
                       STATS, WORK, file_sha256, shard_name)
from .plan import Plan, read_shard, write_plan
from .progress import Progress
from .shardfile import ShardWriter
from .sources import (EXPECTED, LAYOUTS, SPLITS, Record, Source, open_source,
                      read_record)
from .stats import Sums, finalize, save_stats

class BuildError(ReproError):
    """The build cannot go on as asked (the message says why and what to do)."""


# ---- one shard, in a worker process ------------------------------------------------------
_ctx: dict = {}


def _init_worker(ctx: dict, parent: int | None = None) -> None:
    _ctx.update(ctx)
    if parent is not None:  # a pool worker: die with the parent, never finish a shard for a dead build
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Pool.terminate ends workers with SIGTERM, which a parent that ignores it would
        # have passed on (an ignored signal survives exec)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)


def build_shard(task: tuple[str, int, list[Record]]) -> dict:
    split, index, records = task
    out, quality, labels = Path(_ctx["out"]), _ctx["quality"], _ctx["labels"]
    parts = out / WORK / "parts"
    name = shard_name(split, index)
    sums = Sums.zeros(dtype=np.uint32) if split == "train" else None
    skipped, converted = [], []
    with ShardWriter(out / name) as w:
        for r in records:
            try:
                dec = image.decode_256(read_record(r))
            except image.UnreadableImage as e:
                skipped.append({"key": r.key, "path": r.origin, "reason": str(e)})
                continue
            except OSError as e:
                # A loose file gone or unreadable is one image lost: listed, not fatal. A tar
                # read that fails is the whole source failing: raised.
                if r.offset >= 0 or e.errno not in (errno.EACCES, errno.EPERM, errno.ENOENT):
                    raise
                why = "a dangling symbolic link" if os.path.islink(r.path) else f"cannot read: {e.strerror}"
                skipped.append({"key": r.key, "path": r.origin, "reason": why})
                continue
            if dec.notes:
                converted.append({"key": r.key, "path": r.origin, "notes": dec.notes})
            w.add(r.key, image.encode_jpeg(dec.pixels, quality), labels[r.wnid], r.wnid)
            if sums is not None:
                sums.add(dec.pixels)
    if sums is not None:
        sums.save(parts / f"{name}.npz")
    part = {"name": name, "count": w.count, "sha256": w.sha256, "bytes": w.size,
            "planned": len(records), "skipped": skipped, "converted": converted}
    atomic.write_json(parts / f"{name}.json", part)  # written last: the shard counts as done
    return part


def build_planned(task: tuple[str, int, str, int, int]) -> dict:
    """build_shard for a shard of a plan file: (split, index, plan path, byte offset, count)."""
    split, index, path, offset, count = task
    return build_shard((split, index, read_shard(path, offset, count)))


def _finished(out: Path, split: str, index: int) -> dict | None:
    name = shard_name(split, index)
    parts = out / WORK / "parts"
    try:
        part = json.loads((parts / f"{name}.json").read_text())
        ok = (out / name).stat().st_size == part["bytes"] and (split != "train" or (parts / f"{name}.npz").exists())
    except (FileNotFoundError, ValueError, KeyError):
        return None
    return part if ok else None


# ---- the output directory ----------------------------------------------------------------
def _settings(src: Source, args) -> dict:
    holdout = ({"holdout": {"per_class": fall2011.HOLDOUT, "at_most_one_in": fall2011.HOLDOUT_SHARE}}
               if src.layout == "fall2011" else {})  # only here: the other layouts' settings stay as they were
    return {
        "source": str(src.root), "layout": src.layout, "splits": list(args.splits),
        # a generated stand-in (make_fixture leaves the marker) or real data: every run says
        "data": "generated" if (src.root / provenance.MARKER).is_file() else "real",
        # the labels are indices into it: shards of two class lists must never mix
        "classes_sha256": hashlib.sha256("\n".join(src.wnids).encode()).hexdigest(),
        "shard_size": args.shard_size, "quality": args.quality, "seed": args.seed, "limit": args.limit,
        "image": {"size": image.IMAGE_SIZE, "resize": "shorter side to 256, antialiased bicubic, centre crop",
                  "draft": True, "jpeg_subsampling": image.SUBSAMPLING},
        "pillow": PIL.__version__, **holdout,
    }


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in keys if a.get(k) != b.get(k))


def _same(a: dict, b: dict) -> bool:
    """The same build, wherever the source is mounted now: for an unfinished build, whose
    resume checks the new source's listing against the plan digest."""
    return {**a, "source": None} == {**b, "source": None}


def _check_out_place(out: Path, src: Source) -> None:
    """Refuse an --out that is the source, or inside its image trees (train/, val/, the Kaggle
    CLS-LOC tree), before anything is written there."""
    where = next((t for t in src.trees() if out.is_relative_to(t)), None)
    if out == src.root:
        raise BuildError(f"--out {out} is --source: the build would write into the ImageNet tree; "
                         "choose a directory outside it")
    if where is not None:
        raise BuildError(f"--out {out} is inside {where}: the build's files would lie among the "
                         "images (and a folder named like a WNID there is a class); choose a "
                         "directory outside the source's image folders")


def _claim_out(out: Path, settings: dict, alone: bool) -> dict | None:
    """Make `out` ours for this build; returns the manifest if the build is already complete.
    alone: no other process (a --part) can be building in `out`."""
    if (out / MANIFEST).exists():
        old = json.loads((out / MANIFEST).read_text())
        was = old.get("settings", {})
        if was == settings:
            return old
        if _same(was, settings):
            raise BuildError(f"{out} holds a finished build of {was['source']}, not of "
                             f"{settings['source']}: if that is the same source moved, the build "
                             "is complete and there is nothing to do; else use another --out")
        raise BuildError(f"{out} holds a finished build with other settings "
                         f"({_diff(was, settings)}); "
                         "use another --out (or delete it) rather than mixing shards")
    work = out / WORK
    if (work / "settings.json").exists():
        old = json.loads((work / "settings.json").read_text())
        if not _same(old, settings):
            if not alone or any((work / "parts").glob("*.json")) or any(out.glob("*-*.tar")):
                raise BuildError(f"{out} holds an unfinished build with other settings "
                                 f"({_diff(old, settings)}); "
                                 "rerun that command to finish it, or use another --out")
            # A build that failed before its first shard (say, a wrong --source) holds nothing to keep.
            (work / "plan.json").unlink(missing_ok=True)
            atomic.write_json(work / "settings.json", settings)
    else:
        strays = sorted(p.name for p in out.glob("*-*.tar"))
        if strays:
            raise BuildError(f"{out} holds shards ({strays[0]}, ...) from no build this tool knows; use an empty --out")
        atomic.write_json(work / "settings.json", settings)
    (work / "parts").mkdir(parents=True, exist_ok=True)
    return None


def _lock(out: Path, mode: int = fcntl.LOCK_EX | fcntl.LOCK_NB, name: str = "lock"):
    """flock WORK/name. The whole build holds "lock" exclusively; parts (--part) hold it
    shared, side by side, and take "merge.lock" exclusively (waiting) to claim --out and
    to merge."""
    (out / WORK).mkdir(parents=True, exist_ok=True)
    fd = os.open(out / WORK / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
    except BlockingIOError:
        os.close(fd)
        what = "a whole build" if mode & fcntl.LOCK_SH else "another build"
        raise BuildError(f"{what} is running in {out}") from None
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def in_part(index: int, part: int | None, parts: int) -> bool:
    """Whether the shard with this index (within its split) belongs to part `part` of
    `parts` (part None: the whole build)."""
    return part is None or index % parts == part


def _check_out(out: Path) -> None:
    """--out must be a directory, or a path where one can be made."""
    try:
        atomic.check_output(out, directory=True)
    except atomic.OutputError as e:
        raise BuildError(f"--out {out}: {str(e).removeprefix(f'{out}: ')}; give a directory "
                         "for the shards (it is created if missing)") from None


# ---- the build ---------------------------------------------------------------------------
def _nothing_to_build(src: Source, split: str) -> str:
    why = [f"{len(src.unlabelled[split])} image files could not be labelled"] if src.unlabelled[split] else []
    why += [f"{src.ignored[split]} files are not images by their suffix"] if src.ignored[split] else []
    first = src.unlabelled[split][:1]
    return (f"{split}: no images to build under {src.root} ({src.layout} layout)"
            + (f": {'; '.join(why)}" if why else "")
            + (f" (first: {first[0]['path']}: {first[0]['reason']})" if first else "")
            + f"\n{EXPECTED}")


def _count_check(src: Source, split: str, plan: Plan, log) -> dict:
    """Source image count vs what the devkit (or ILSVRC2012 itself) says; per class where known."""
    found = plan.listed + len(src.unlabelled[split])
    expected, who = src.expected(split)
    info = {"source_count": found, "expected_count": expected, "expected_from": who,
            "ignored_files": src.ignored[split]}  # not images by their suffix (folder/kaggle trees)
    if expected is not None and expected != found:
        info["count_warning"] = f"the source has {found} images, {who} says {expected} ({found - expected:+d})"
        log(f"WARNING {split}: {info['count_warning']}")
        if split == "train" and src.devkit and src.devkit.num_train_images:
            have = plan.per_class
            info["class_count_mismatch"] = {w: {"found": have.get(w, 0), "expected": n}
                                            for w, n in src.devkit.num_train_images.items() if have.get(w, 0) != n}
    # A class list read from a file (devkit, mapping) keeps a class the images lack: name it.
    none = [w for w in src.wnids if not plan.per_class.get(w)] if split == "train" else []
    if none:
        log(f"WARNING {split}: no images of {len(none)} classes, whose labels are kept but "
            f"nothing trains them: {', '.join(none[:10])}{' ...' if len(none) > 10 else ''}")
    return info


def build_shards(source, out, *, workers: int = 0, shard_size: int = DEFAULT_SHARD_SIZE,
                 quality: int = DEFAULT_QUALITY, limit: int | None = None, seed: int = DEFAULT_SEED,
                 splits=None, layout: str = "auto", progress: str = "off", part: int | None = None,
                 parts: int = 1, verify: bool = False, log=print) -> dict | None:
    """Python entry point of the CLI; returns the manifest (None from a part that left
    shards of other parts unfinished). Raises SourceError / BuildError."""
    args = argparse.Namespace(source=source, out=out, workers=workers, shard_size=shard_size, quality=quality,
                              limit=limit, seed=seed, splits=splits and list(splits), layout=layout, progress=progress,
                              part=part, parts=parts, verify=verify)
    return build(args, log)


def build(args, log=print) -> dict | None:
    t0 = time.time()
    out = Path(args.out).resolve()
    _check_out(out)
    src = open_source(args.source, args.layout, args.splits)  # None: every split the layout has
    args.splits = list(src.splits)
    log(f"source: {src.root} (layout: {src.layout}, {len(src.wnids)} classes)\n  found: {src.found}")
    _check_out_place(out, src)
    settings = _settings(src, args)
    out.mkdir(parents=True, exist_ok=True)
    part = getattr(args, "part", None)
    if part is None:
        lock = _lock(out)
    else:
        lock = _lock(out, fcntl.LOCK_SH | fcntl.LOCK_NB)
    try:
        if part is None:
            done = _claim_out(out, settings, alone=True)
        else:
            merge_lock = _lock(out, fcntl.LOCK_EX, "merge.lock")
            try:
                done = _claim_out(out, settings, alone=False)
            finally:
                _unlock(merge_lock)
        damaged = _check_finished(out, done, args, log) if done is not None else {}
        if done is not None and not damaged:
            return done
        work = out / WORK
        if part is None:  # a part leaves this to the merge: other parts may be writing
            for d in (out, work, work / "parts"):
                atomic.remove_stale_tmp(d)
        ctx = {"out": str(out), "quality": args.quality, "labels": {w: i for i, w in enumerate(src.wnids)}}
        workers = args.workers or len(os.sched_getaffinity(0))
        with _pool(ctx, workers) as (imap, imap_ordered):
            if damaged:
                return _repair(args, src, out, done, damaged, imap, imap_ordered, log)
            return _run(args, src, settings, out, workers, imap, imap_ordered, log, t0)
    finally:
        if (out / MANIFEST).exists():  # complete: the resume state has served its purpose
            if part is not None:  # ... once no other part still runs (the last one removes it)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass
                else:
                    shutil.rmtree(out / WORK, ignore_errors=True)
            else:
                shutil.rmtree(out / WORK, ignore_errors=True)
        os.close(lock)


@contextlib.contextmanager
def _pool(ctx: dict, workers: int):
    """(imap, imap_ordered) over `workers` processes, or in this one when 1."""
    if workers == 1:
        _init_worker(ctx)
        yield map, map
        return
    # spawn, not fork: callers (repro demo, tests) may have threads that a fork would copy
    # mid-lock.
    pool = mp.get_context("spawn").Pool(workers, _init_worker, (ctx, os.getpid()))
    try:
        yield (lambda f, xs: pool.imap_unordered(f, xs, chunksize=1),
               lambda f, xs: pool.imap(f, xs, chunksize=1))
    finally:
        pool.terminate()
        pool.join()


# ---- a finished build: checked on every rerun, its damaged files rebuilt -------------------
def _damaged(out: Path, manifest: dict, hashes: bool) -> dict[str, str]:
    """The files of a finished build that are not as its manifest records them, with why:
    a shard missing or of another size (with `hashes`, also of another sha256); stats.npz
    missing or of another sha256 (always hashed: it is small)."""
    bad = {}
    for entry in (e for s in manifest["splits"].values() for e in s["shards"]):
        path = out / entry["name"]
        if not path.is_file():
            bad[entry["name"]] = "missing"
        elif path.stat().st_size != entry["bytes"]:
            bad[entry["name"]] = f"{path.stat().st_size} bytes, {MANIFEST} says {entry['bytes']}"
        elif hashes and file_sha256(path) != entry["sha256"]:
            bad[entry["name"]] = f"sha256 differs from {MANIFEST}'s"
    if "stats" in manifest:
        if not (out / STATS).is_file():
            bad[STATS] = "missing"
        elif file_sha256(out / STATS) != manifest["stats"]["sha256"]:
            bad[STATS] = f"sha256 differs from {MANIFEST}'s"
    return bad


def _check_finished(out: Path, done: dict, args, log) -> dict[str, str]:
    """Check a finished build's files (_damaged) and say what was found; a part refuses to
    repair them (the whole build does it, alone)."""
    hashes = getattr(args, "verify", False)
    damaged = _damaged(out, done, hashes)
    if not damaged:
        counts = ", ".join(f"{s} {v['count']} images" for s, v in done["splits"].items())
        checked = "sizes and sha256" if hashes else "sizes, and stats.npz's sha256"
        log(f"{out} already holds this build, complete ({counts}; {checked} checked): nothing to do")
        return {}
    listing = "; ".join(f"{name}: {why}" for name, why in sorted(damaged.items()))
    if getattr(args, "part", None) is not None:
        raise BuildError(f"{out} holds a finished build with damaged files ({listing}); run the "
                         "same command without --part to rebuild them")
    log(f"{out} holds a finished build with damaged files ({listing}): rebuilding them")
    return damaged


def _repair(args, src, out, done, damaged, imap, imap_ordered, log) -> dict:
    """Rebuild the damaged files of a finished build as its manifest records them (the same
    source and settings give the same bytes; checked). stats.npz is merged from every
    training shard's sums, so all training shards are rebuilt with it."""
    (out / WORK / "parts").mkdir(parents=True, exist_ok=True)
    plans, split_info = _plan(args, src, out / WORK, imap_ordered, log)
    changed = [s for s in args.splits if split_info[s]["plan_sha256"] != done["splits"][s]["plan_sha256"]]
    if changed:
        raise BuildError(f"the {'/'.join(changed)} images under {src.root} changed since {out} was "
                         "built: its damaged files cannot be rebuilt as they were; use another --out")
    todo = [(split, i, str(plans[split].path), offset, count) for split in args.splits
            for i, (offset, count) in enumerate(plans[split].shards)
            if shard_name(split, i) in damaged or (STATS in damaged and split == "train")]
    recorded = {e["name"]: e["sha256"] for s in done["splits"].values() for e in s["shards"]}
    for part in imap(build_planned, todo):
        if part["sha256"] != recorded[part["name"]]:
            raise BuildError(f"{out / part['name']}: rebuilt with other bytes than {MANIFEST} records "
                             "(a source file changed in place?); use another --out")
    if STATS in damaged:
        sums = Sums.zeros()
        for i in range(len(plans["train"].shards)):
            sums += Sums.load(out / WORK / "parts" / f"{shard_name('train', i)}.npz")
        save_stats(out / STATS, finalize(sums))
        if file_sha256(out / STATS) != done["stats"]["sha256"]:
            raise BuildError(f"{out / STATS}: rebuilt with other bytes than {MANIFEST} records; "
                             "use another --out")
    log(f"repaired {out}: {len(todo)} shards rebuilt{' and ' + STATS if STATS in damaged else ''}, "
        f"as {MANIFEST} records them")
    return done


# ---- a new or unfinished build -------------------------------------------------------------
def _plan(args, src, work, imap_ordered, log) -> tuple[dict, dict]:
    """Each split's shards (plan_split), and what the manifest says of its source."""
    plans, split_info = {}, {}
    for split in args.splits:
        t = time.time()
        plans[split] = plan = write_plan(src.records(split, cache_dir=work, imap=imap_ordered), split,
                                         work / f"plan-{split}.jsonl", args.shard_size, args.seed, args.limit)
        if not plan.listed:
            raise BuildError(_nothing_to_build(src, split))
        info = _count_check(src, split, plan, log)
        info["plan_sha256"] = plan.digest
        split_info[split] = info
        log(f"{split}: {info['source_count']} images in the source ({time.time() - t:.1f} s to list and "
            f"plan), {sum(n for _, n in plan.shards)} to build in {len(plan.shards)} shards")
    return plans, split_info


def _run(args, src, settings, out, workers, imap, imap_ordered, log, t0) -> dict | None:
    work = out / WORK
    plans, split_info = _plan(args, src, work, imap_ordered, log)
    plan_file = work / "plan.json"
    digests = {s: split_info[s]["plan_sha256"] for s in args.splits}
    if plan_file.exists() and json.loads(plan_file.read_text()) != digests:
        raise BuildError(f"the images under {src.root} changed since this build started in {out}; "
                         "use another --out (or delete it) to start over")
    atomic.write_json(plan_file, digests)

    part_of = getattr(args, "part", None), getattr(args, "parts", 1)
    parts, todo = {}, []
    for split in args.splits:
        for i, (offset, count) in enumerate(plans[split].shards):
            if not in_part(i, *part_of):
                continue
            part = _finished(out, split, i)
            if part is None:
                todo.append((split, i, str(plans[split].path), offset, count))
            else:
                parts[(split, i)] = part
    if part_of[0] is not None:
        log(f"part {part_of[0]} of {part_of[1]}: {len(parts) + len(todo)} of the "
            f"{sum(len(plans[s].shards) for s in args.splits)} shards (index {part_of[0]} mod {part_of[1]})")
    if parts:
        log(f"resuming: {len(parts)} shards already done, {len(todo)} to go")
    total = sum(t[4] for t in todo)
    t_build = time.time()
    with Progress(total, "shards", "img", args.progress) as bar:
        for part in imap(build_planned, todo):
            split, index = part["name"].split("-")[0], int(part["name"].split("-")[1][:6])
            parts[(split, index)] = part
            bar.update(part["planned"])
    build_s = time.time() - t_build
    if part_of[0] is not None:
        return _merge_if_complete(args, src, settings, out, plans, split_info, parts, log,
                                  (t0, total, build_s, workers))
    return _merge(args, src, settings, out, plans, split_info, parts, log, (t0, total, build_s, workers))


def _merge_if_complete(args, src, settings, out, plans, split_info, parts, log, timing) -> dict | None:
    """A part's last step: under merge.lock, merge if every shard of every part is finished."""
    lock = _lock(out, fcntl.LOCK_EX, "merge.lock")
    try:
        if (out / MANIFEST).exists():
            log(f"part {args.part} of {args.parts} done; another part has written {out / MANIFEST}")
            return json.loads((out / MANIFEST).read_text())
        missing = 0
        for split in args.splits:
            for i in range(len(plans[split].shards)):
                if (split, i) not in parts:
                    found = _finished(out, split, i)
                    if found is None:
                        missing += 1
                    else:
                        parts[(split, i)] = found
        if missing:
            log(f"part {args.part} of {args.parts} done; {missing} shards of other parts are not "
                f"finished yet: the last part to finish writes {MANIFEST} and {STATS}")
            return None
        for d in (out, out / WORK / "parts"):  # stale temp files of killed parts
            atomic.remove_stale_tmp(d)
        log(f"part {args.part} of {args.parts}: every shard is finished; merging")
        return _merge(args, src, settings, out, plans, split_info, parts, log, timing)
    finally:
        _unlock(lock)


def _merge(args, src, settings, out, plans, split_info, parts, log, timing) -> dict:
    """Step 4: statistics from the per-shard sums, then manifest.json, last."""
    work = out / WORK
    t0, total, build_s, workers = timing
    manifest = {"format_version": FORMAT_VERSION, "settings": settings, "classes": src.wnids}
    if src.words and all(w in src.words for w in src.wnids):  # where the source names its classes
        manifest["words"] = [src.words[w] for w in src.wnids]
    manifest["splits"] = {}
    for split in args.splits:
        plist = [parts[(split, i)] for i in range(len(plans[split].shards))]
        if not any(p["count"] for p in plist):
            # Nothing in the split could be read: forget its shards, so that the same command
            # rebuilds them once the files are fixed, and say why.
            for i in range(len(plans[split].shards)):
                (work / "parts" / f"{shard_name(split, i)}.json").unlink(missing_ok=True)
            first = next(s for p in plist for s in p["skipped"])
            raise BuildError(f"{split}: none of its {sum(p['planned'] for p in plist)} images could be "
                             f"read (first: {first['path']}: {first['reason']}); fix the files and "
                             "run the same command again")
        manifest["splits"][split] = {
            "count": sum(p["count"] for p in plist),
            "shards": [{k: p[k] for k in ("name", "count", "sha256", "bytes")} for p in plist],
            "skipped": src.unlabelled[split] + [s for p in plist for s in p["skipped"]],
            "converted": [c for p in plist for c in p["converted"]],
            **split_info[split],
        }
    if "train" in args.splits:
        sums = Sums.zeros()
        for i in range(len(plans["train"].shards)):
            sums += Sums.load(work / "parts" / f"{shard_name('train', i)}.npz")
        save_stats(out / STATS, finalize(sums))       # train has images: checked above
        manifest["stats"] = {"file": STATS, "sha256": file_sha256(out / STATS), "count": sums.count}
    atomic.write_json(out / MANIFEST, manifest)  # last: from now on the build is complete
    _summary(manifest, out, time.time() - t0, total, build_s, workers, log)
    return manifest


def _summary(m: dict, out: Path, seconds: float, built: int, build_s: float, workers: int, log) -> None:
    log(f"done: {out} (layout {m['settings']['layout']}, quality {m['settings']['quality']})")
    for split, s in m["splits"].items():
        exp = f", expected {s['expected_count']} ({s['expected_from']})" if s["expected_count"] is not None else ""
        log(f"  {split}: {s['count']} images in {len(s['shards'])} shards; {s['source_count']} in the source{exp}; "
            f"{len(s['skipped'])} skipped, {len(s['converted'])} converted")
        if s["ignored_files"]:
            log(f"    ignored {s['ignored_files']} files without an image suffix")
        if "count_warning" in s:
            log(f"    WARNING: {s['count_warning']}")
        for k in s["skipped"]:
            log(f"    skipped {k['path']}: {k['reason']}")
    if "stats" in m:
        log(f"  stats: {STATS} over {m['stats']['count']} training images")
    rate = built / build_s if build_s > 0 else 0.0
    log(f"  time {seconds:.1f} s; {built} images built at {rate:.1f} images/s "
        f"({rate / workers:.1f} per worker, {workers} workers)")


# ---- CLI ---------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep.build_shards", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", required=True, help="directory with the official ILSVRC-2012 or -2010 tarballs, "
                                                   "train/ val/ folders, the Kaggle tree, or the Fall 2011 release")
    p.add_argument("--out", required=True, help="shard directory (created; resumable)")
    p.add_argument("--workers", type=int, default=0, help="processes; 0 = all cores available")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="images per shard")
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality of the re-encoded images")
    p.add_argument("--limit", type=int, default=None,
                   help="build at most N images per split (train: the first N of the fixed shuffle; "
                        "val, test: the first N by key)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the fixed training-shard shuffle")
    p.add_argument("--splits", default=None, help="comma-separated splits to build (default: all the "
                                                  "layout has: train,val; ilsvrc2010 also test)")
    p.add_argument("--layout", default="auto", choices=("auto",) + LAYOUTS,
                   help="source layout; auto = detect")
    p.add_argument("--part", type=int, default=None, metavar="I",
                   help="build only the shards whose index within their split is I mod --parts "
                        "(a job array task); the part that finds all shards finished writes the manifest")
    p.add_argument("--parts", type=int, default=1, metavar="N", help="the number of parts (with --part)")
    p.add_argument("--verify", action="store_true",
                   help="on a finished build, also re-hash every shard (their sizes and stats.npz's "
                        "sha256 are always checked); damaged or missing files are rebuilt")
    p.add_argument("--progress", default="auto", choices=("auto", "bar", "lines", "off"),
                   help="bar: a tqdm bar; lines: a line every 10%% or minute (count, rate, ETA); "
                        "auto = the bar on a terminal, lines elsewhere and under SLURM")
    return p


class Terminated(Exception):
    """SIGTERM (scancel, a preempted job): leave as Ctrl-C does, workers stopped, shards kept."""


def _terminated(signum, frame):
    raise Terminated


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.splits is not None:
        args.splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in args.splits or [] if s not in SPLITS]
    problems = ([f"--splits: unknown {bad}, choose from {SPLITS}"] if bad or args.splits == [] else []) \
        + (["--shard-size must be >= 1"] if args.shard_size < 1 else []) \
        + (["--quality must be 1..100"] if not 1 <= args.quality <= 100 else []) \
        + (["--limit must be >= 1"] if args.limit is not None and args.limit < 1 else []) \
        + (["--workers must be >= 0"] if args.workers < 0 else []) \
        + (["--parts must be >= 1"] if args.parts < 1 else []) \
        + ([f"--part must be in 0..{args.parts - 1}"] if args.part is not None and not 0 <= args.part < args.parts
           else []) \
        + (["--parts needs --part"] if args.parts != 1 and args.part is None else [])
    if problems:
        parser().error("; ".join(problems))
    signal.signal(signal.SIGTERM, _terminated)
    try:
        build(args)
    except Terminated:
        print("build_shards: terminated (SIGTERM); finished shards are kept: run the same "
              "command again to resume", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("build_shards: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, EOFError, tarfile.TarError) as e:
        if isinstance(e, ReproError):     # names the file and what to do already
            raise
        # Damaged input the checks above did not foresee (a corrupt archive, a devkit or
        # manifest that does not parse): name it and where it came from, no traceback.
        raise BuildError(f"{type(e).__name__}: {e} (source {args.source}, out {args.out})") from None
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
