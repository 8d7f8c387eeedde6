"""python -m data_prep.build_shards --source PATH --out DIR: ImageNet -> WebDataset shards + stats.

The build, top to bottom:

1. detect the source layout (sources.py) and refuse an --out that holds a
   build with other settings;
2. plan: list every image, sort by key; shuffle train by a keyed hash of
   (seed, key) so a shard holds many classes; take --limit; cut into shards.
   The plan is fixed by source and settings alone;
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
from . import atomic, image
from .manifest import FORMAT_VERSION, MANIFEST, STATS, WORK, shard_name
from .progress import Progress
from .shardfile import ShardWriter
from .sources import (EXPECTED, SPLITS, Record, Source, SourceError, detect_layouts, open_source,
                      read_record)
from .stats import Sums, finalize, save_stats

DEFAULT_SHARD_SIZE = 1024
DEFAULT_QUALITY = 95
DEFAULT_SEED = 0


class BuildError(Exception):
    """The build cannot go on as asked (the message says why and what to do)."""


# ---- plan ------------------------------------------------------------------------------
def shuffle_key(seed: int, key: str) -> bytes:
    """Sort key of the fixed training shuffle: a hash, so it is the same on every platform and version."""
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=16).digest()


def plan_split(records: list[Record], split: str, shard_size: int, seed: int, limit: int | None):
    """Records (sorted by key) -> list of shards, each a list of records, in final order."""
    if split == "train":
        records = sorted(records, key=lambda r: shuffle_key(seed, r.key))
    if limit is not None:
        records = records[:limit]
    return [records[i:i + shard_size] for i in range(0, len(records), shard_size)]


def plan_digest(shards: list[list[Record]]) -> str:
    h = hashlib.sha256()
    for shard in shards:
        for r in shard:
            h.update(f"{r.key}\t{r.wnid}\n".encode())
        h.update(b"--\n")
    return h.hexdigest()


# ---- one shard, in a worker process ------------------------------------------------------
_ctx: dict = {}


def _init_worker(ctx: dict, parent: int | None = None) -> None:
    _ctx.update(ctx)
    if parent is not None:  # a pool worker: die with the parent, never finish a shard for a dead build
        signal.signal(signal.SIGINT, signal.SIG_IGN)
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
                skipped.append({"key": r.key, "path": r.origin, "reason": f"cannot read: {e.strerror}"})
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
    return {
        "source": str(src.root), "layout": src.layout, "splits": list(args.splits),
        # the labels are indices into it: shards of two class lists must never mix
        "classes_sha256": hashlib.sha256("\n".join(src.wnids).encode()).hexdigest(),
        "shard_size": args.shard_size, "quality": args.quality, "seed": args.seed, "limit": args.limit,
        "image": {"size": image.IMAGE_SIZE, "resize": "shorter side to 256, antialiased bicubic, centre crop",
                  "draft": True, "jpeg_subsampling": image.SUBSAMPLING},
        "pillow": PIL.__version__,
    }


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in keys if a.get(k) != b.get(k))


def _same(a: dict, b: dict) -> bool:
    """The same build, wherever the source is mounted now: for an unfinished build, whose
    resume checks the new source's listing against the plan digest."""
    return {**a, "source": None} == {**b, "source": None}


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


def no_manifest(directory: Path | str) -> str:
    """Why `directory` (given as shards) has no manifest.json, and what to run: an
    unfinished build, ImageNet itself given instead of its shards, or nothing built yet.
    The message starts with "<dir>/manifest.json: no manifest.json"."""
    d = Path(directory)
    head = f"{d / MANIFEST}: no manifest.json"
    settings = d / WORK / "settings.json"
    if settings.is_file():
        finished = len(list((d / WORK / "parts").glob("*.json")))
        try:
            command = _command(json.loads(settings.read_text()), d)
        except (ValueError, KeyError):
            command = f"the build_shards command that wrote {settings}"
        return (f"{head}: {d} holds an unfinished build ({finished} shards finished): run the "
                f"same build_shards command to finish it: {command}")
    layouts = detect_layouts(d) if d.is_dir() else []
    if layouts:
        return (f"{head}: {d} is ImageNet itself ({layouts[0]} layout), not its shards: build "
                f"them with `python -m data_prep.build_shards --source {d} --out SHARDS`, then "
                f"give SHARDS")
    missing = "" if d.is_dir() else f" ({d} does not exist)"
    return (f"{head}{missing}; build shards with `python -m data_prep.build_shards --source "
            f"IMAGENET --out {d}`")


def _command(settings: dict, out: Path) -> str:
    """The build_shards command line that gives these settings (defaults left out)."""
    words = ["python -m data_prep.build_shards", f"--source {settings['source']}", f"--out {out}"]
    options = {"--shard-size": (settings["shard_size"], DEFAULT_SHARD_SIZE),
               "--quality": (settings["quality"], DEFAULT_QUALITY),
               "--seed": (settings["seed"], DEFAULT_SEED), "--limit": (settings["limit"], None),
               "--splits": (",".join(settings["splits"]), ",".join(SPLITS))}
    words += [f"{flag} {value}" for flag, (value, default) in options.items() if value != default]
    return "`" + " ".join(words) + "`"


def _check_out(out: Path) -> None:
    """--out must be a directory, or a path where one can be made."""
    try:
        atomic.check_output(out, directory=True)
    except atomic.OutputError as e:
        raise BuildError(f"--out {out}: {str(e).removeprefix(f'{out}: ')}; give a directory "
                         "for the shards (it is created if missing)") from None


# ---- the build ---------------------------------------------------------------------------
def _progress_mode(choice: str) -> str:
    return "bar" if choice == "on" else choice     # "on": the bar, as before lines existed


def _nothing_to_build(src: Source, split: str) -> str:
    why = [f"{len(src.unlabelled[split])} image files could not be labelled"] if src.unlabelled[split] else []
    why += [f"{src.ignored[split]} files are not images by their suffix"] if src.ignored[split] else []
    first = src.unlabelled[split][:1]
    return (f"{split}: no images to build under {src.root} ({src.layout} layout)"
            + (f": {'; '.join(why)}" if why else "")
            + (f" (first: {first[0]['path']}: {first[0]['reason']})" if first else "")
            + f"\n{EXPECTED}")


def _count_check(src: Source, split: str, records: list[Record], log) -> dict:
    """Source image count vs what the devkit (or ILSVRC2012 itself) says; per class where known."""
    found = len(records) + len(src.unlabelled[split])
    expected, who = src.expected(split)
    info = {"source_count": found, "expected_count": expected, "expected_from": who,
            "ignored_files": src.ignored[split]}  # not images by their suffix (folder/kaggle trees)
    if expected is not None and expected != found:
        info["count_warning"] = f"the source has {found} images, {who} says {expected} ({found - expected:+d})"
        log(f"WARNING {split}: {info['count_warning']}")
        if split == "train" and src.devkit and src.devkit.num_train_images:
            have: dict[str, int] = {}
            for r in records:
                have[r.wnid] = have.get(r.wnid, 0) + 1
            info["class_count_mismatch"] = {w: {"found": have.get(w, 0), "expected": n}
                                            for w, n in src.devkit.num_train_images.items() if have.get(w, 0) != n}
    return info


def build_shards(source, out, *, workers: int = 0, shard_size: int = DEFAULT_SHARD_SIZE,
                 quality: int = DEFAULT_QUALITY, limit: int | None = None, seed: int = DEFAULT_SEED,
                 splits=SPLITS, layout: str = "auto", progress: str = "off", part: int | None = None,
                 parts: int = 1, log=print) -> dict | None:
    """Python entry point of the CLI; returns the manifest (None from a part that left
    shards of other parts unfinished). Raises SourceError / BuildError."""
    args = argparse.Namespace(source=source, out=out, workers=workers, shard_size=shard_size, quality=quality,
                              limit=limit, seed=seed, splits=list(splits), layout=layout, progress=progress,
                              part=part, parts=parts)
    return build(args, log)


def build(args, log=print) -> dict | None:
    t0 = time.time()
    out = Path(args.out).resolve()
    _check_out(out)
    splits = [s for s in SPLITS if s in args.splits]
    args.splits = splits
    src = open_source(args.source, args.layout, splits)
    log(f"source: {src.root} (layout: {src.layout}, {len(src.wnids)} classes)")
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
        if done is not None:
            counts = ", ".join(f"{s} {v['count']} images" for s, v in done["splits"].items())
            log(f"{out} already holds this build, complete ({counts}): nothing to do")
            return done
        work = out / WORK
        if part is None:  # a part leaves this to the merge: other parts may be writing
            for d in (out, work, work / "parts"):
                atomic.remove_stale_tmp(d)
        ctx = {"out": str(out), "quality": args.quality, "labels": {w: i for i, w in enumerate(src.wnids)}}
        workers = args.workers or len(os.sched_getaffinity(0))
        if workers > 1:
            # spawn, not fork: callers (repro demo, tests) may have threads that a fork would
            # copy mid-lock.
            pool = mp.get_context("spawn").Pool(workers, _init_worker, (ctx, os.getpid()))
            imap = lambda f, xs: pool.imap_unordered(f, xs, chunksize=1)  # noqa: E731
            imap_ordered = lambda f, xs: pool.imap(f, xs, chunksize=1)  # noqa: E731
        else:
            pool = None
            _init_worker(ctx)
            imap = imap_ordered = map
        try:
            manifest = _run(args, src, settings, out, workers, imap, imap_ordered, log, t0)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        return manifest
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


def _run(args, src, settings, out, workers, imap, imap_ordered, log, t0) -> dict | None:
    work = out / WORK
    plans, split_info = {}, {}
    for split in args.splits:
        t = time.time()
        records = src.records(split, cache_dir=work, imap=imap_ordered)
        if not records:
            raise BuildError(_nothing_to_build(src, split))
        info = _count_check(src, split, records, log)
        plans[split] = plan_split(records, split, args.shard_size, args.seed, args.limit)
        info["plan_sha256"] = plan_digest(plans[split])
        split_info[split] = info
        log(f"{split}: {info['source_count']} images in the source ({time.time() - t:.1f} s to list), "
            f"{sum(map(len, plans[split]))} to build in {len(plans[split])} shards")
    plan_file = work / "plan.json"
    digests = {s: split_info[s]["plan_sha256"] for s in args.splits}
    if plan_file.exists() and json.loads(plan_file.read_text()) != digests:
        raise BuildError(f"the images under {src.root} changed since this build started in {out}; "
                         "use another --out (or delete it) to start over")
    atomic.write_json(plan_file, digests)

    part_of = getattr(args, "part", None), getattr(args, "parts", 1)
    parts, todo = {}, []
    for split in args.splits:
        for i, shard in enumerate(plans[split]):
            if not in_part(i, *part_of):
                continue
            part = _finished(out, split, i)
            if part is None:
                todo.append((split, i, shard))
            else:
                parts[(split, i)] = part
    if part_of[0] is not None:
        log(f"part {part_of[0]} of {part_of[1]}: {len(parts) + len(todo)} of the "
            f"{sum(len(plans[s]) for s in args.splits)} shards (index {part_of[0]} mod {part_of[1]})")
    if parts:
        log(f"resuming: {len(parts)} shards already done, {len(todo)} to go")
    total = sum(len(t[2]) for t in todo)
    t_build = time.time()
    with Progress(total, "shards", "img", _progress_mode(args.progress)) as bar:
        for part in imap(build_shard, todo):
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
            for i in range(len(plans[split])):
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
    manifest = {"format_version": FORMAT_VERSION, "settings": settings, "classes": src.wnids, "splits": {}}
    if any(src.words.get(w) for w in src.wnids):   # the devkit's or Kaggle's names, for people
        manifest["class_names"] = [src.words.get(w, "") for w in src.wnids]
    for split in args.splits:
        plist = [parts[(split, i)] for i in range(len(plans[split]))]
        if not any(p["count"] for p in plist):
            # Nothing in the split could be read: forget its shards, so that the same command
            # rebuilds them once the files are fixed, and say why.
            for i in range(len(plans[split])):
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
        for i in range(len(plans["train"])):
            sums += Sums.load(work / "parts" / f"{shard_name('train', i)}.npz")
        save_stats(out / STATS, finalize(sums))       # train has images: checked above
        manifest["stats"] = {"file": STATS, "sha256": _sha256(out / STATS), "count": sums.count}
    atomic.write_json(out / MANIFEST, manifest)  # last: from now on the build is complete
    _summary(manifest, out, time.time() - t0, total, build_s, workers, log)
    return manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _summary(m: dict, out: Path, seconds: float, built: int, build_s: float, workers: int, log) -> None:
    log(f"done: {out} (layout {m['settings']['layout']}, quality {m['settings']['quality']})")
    for split, s in m["splits"].items():
        exp = f", expected {s['expected_count']} ({s['expected_from']})" if s["expected_count"] is not None else ""
        log(f"  {split}: {s['count']} images in {len(s['shards'])} shards; {s['source_count']} in the source{exp}; "
            f"{len(s['skipped'])} skipped, {len(s['converted'])} converted")
        if s.get("ignored_files"):
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
    p.add_argument("--source", required=True, help="directory with the official tarballs, train/ val/ folders, "
                                                   "or the Kaggle tree")
    p.add_argument("--out", required=True, help="shard directory (created; resumable)")
    p.add_argument("--workers", type=int, default=0, help="processes; 0 = all cores available")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="images per shard")
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help="JPEG quality of the re-encoded images")
    p.add_argument("--limit", type=int, default=None,
                   help="build at most N images per split (train: the first N of the fixed shuffle; "
                        "val: the first N by key)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the fixed training-shard shuffle")
    p.add_argument("--splits", default="train,val", help="comma-separated splits to build")
    p.add_argument("--layout", default="auto", choices=("auto", "official", "folder", "kaggle"),
                   help="source layout; auto = detect")
    p.add_argument("--part", type=int, default=None, metavar="I",
                   help="build only the shards whose index within their split is I mod --parts "
                        "(a job array task); the part that finds all shards finished writes the manifest")
    p.add_argument("--parts", type=int, default=1, metavar="N", help="the number of parts (with --part)")
    p.add_argument("--progress", default="auto", choices=("auto", "bar", "lines", "on", "off"),
                   help="bar: a tqdm bar; lines: a line every 10%% or minute (count, rate, ETA); "
                        "auto = the bar on a terminal, lines elsewhere and under SLURM; on = bar")
    return p


class Terminated(Exception):
    """SIGTERM (scancel, a preempted job): leave as Ctrl-C does, workers stopped, shards kept."""


def _terminated(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in args.splits if s not in SPLITS]
    problems = ([f"--splits: unknown {bad}, choose from {SPLITS}"] if bad or not args.splits else []) \
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
        return 128 + signal.SIGTERM
    except (SourceError, BuildError) as e:
        print(f"build_shards: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError, EOFError, tarfile.TarError) as e:
        # Damaged input the checks above did not foresee (a corrupt archive, a devkit or
        # manifest that does not parse): name it and where it came from, no traceback.
        print(f"build_shards: error: {type(e).__name__}: {e} (source {args.source}, out {args.out})",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("build_shards: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
