"""`repro train`: the paper's recipe (section 5) on 1..N processes, resumable exactly.

    train()  =  setup_run()                        devices, shards, model, resume, logging
                while epochs remain:
                    train_one_epoch()              SGD steps; checkpoint on a stop signal
                    end_epoch()                    validate, schedule step, checkpoint;
                                                   on a stop signal checkpoint at once

Everything random is derived from (seed, epoch, step, rank): the loader's stream
(repro.data.order), the PCA noise and the dropout masks are re-seeded every step, so
a checkpoint needs only the weights, the optimizer, the schedule and the `Position`
to continue bit for bit.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data_prep import interactive
from data_prep.atomic import check_output
from data_prep.progress import duration
from data_prep.manifest import STATS
from repro import checkpoint, distributed, preempt
from repro.augment import Normalizer, derived_seed, step_generator
from repro.config import Config, ConfigError, resume_changes
from repro.data.loader import device_images, device_loader, empty_batch
from repro.data.order import EpochPlan, in_order
from repro.data.shards import Shard, data_fingerprint, read_manifest, split_shards
from repro.distributed import DistContext, pick_device
from repro.evaluate import topk_correct
from repro.exits import Refused
from repro.optim import PaperSGD, param_groups
from repro.placement import Placed, make_normalizer, place_model
from repro.schedule import Schedule
from repro.towers import TowerAlexNet, load_single_optimizer_state, single_optimizer_state
from repro.tracking import Tracker, best_val, read_metrics

EXIT_NONFINITE = 3    # the loss became NaN/inf; the last good checkpoint (if any) is kept


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class Position:
    """Where a run is: what a checkpoint records and resume() restores."""
    epoch: int = 0                   # epochs done
    step: int = 0                    # steps done in `epoch`
    global_step: int = 0
    best_top1_err: float = math.inf
    val_pending: bool = False        # `epoch`'s steps are all done, its validation is not


@dataclass
class Pace:
    """Seconds a step, for the ETAs: averaged from this process's first log line on, so
    that start-up (loader workers, compilation) is left out, while validation and
    checkpoints, which the rest of the run has too, are in."""
    since: float | None = None       # time.perf_counter() at the first log line
    step0: int = 0                   # the global step then

    def seconds_per_step(self, global_step: int, averages: dict, batch_size: int) -> float:
        now = time.perf_counter()
        if self.since is None:
            self.since, self.step0 = now, global_step
        if global_step > self.step0:
            return (now - self.since) / (global_step - self.step0)
        return batch_size / averages["images_per_s"]     # the first line: its own steps' rate


@dataclass
class Run:
    """What the training loop works with, set up once by setup_run()."""
    cfg: Config
    run_dir: Path
    dist: DistContext
    device: torch.device
    classes: list[str]
    train_shards: list[Shard]
    val_shards: list[Shard]
    placed: Placed
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    normalizer: Normalizer
    stream: dict                     # what fixes an epoch's sample order (checked on resume)
    stop: preempt.StopFlag
    tracker: Tracker | None          # the main rank's metrics.jsonl (+ W&B)
    pos: Position
    progress: str                    # bar | lines | off
    last_save: float = 0.0           # time.monotonic() of the last checkpoint
    data: dict | None = None         # the shards' data_fingerprint, kept in every checkpoint
    first_step: int = 0              # the global step this process started from
    pace: Pace = field(default_factory=Pace)


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path,
          init_from: str | Path | None = None, allow_other_shards: bool = False,
          stop: preempt.StopFlag | None = None) -> int:
    """Train (or resume) into run_dir; returns the process exit status. init_from: a new
    run starts from that checkpoint's weights where they fit (fine-tuning, section 6).
    allow_other_shards: resume on shards whose manifest or stats.npz differ from the
    checkpoint's. `stop`: the stop signals' flag, if the caller installed it earlier
    (repro.cli does, before torch loads)."""
    with contextlib.ExitStack() as cleanup:     # the run dir's lock, however train ends
        stop = stop or preempt.StopFlag()
        cleanup.callback(stop.close)
        run = setup_run(cfg, Path(data_dir), Path(run_dir), cleanup, stop, init_from,
                        allow_other_shards)
        already = run.pos.epoch >= cfg.schedule.epochs and not run.pos.val_pending
        try:
            while run.pos.epoch < cfg.schedule.epochs:
                # A stop that came before (start-up, the last save): what is on disk is current.
                if distributed.any_rank(stop.raised, run.dist, run.device):
                    return stopped(run, wrote=False)
                if not (run.pos.val_pending or train_one_epoch(run)) or not end_epoch(run):
                    return stopped(run)
        except NonFiniteLoss as e:
            return nonfinite(run, e)
        finally:
            distributed.shutdown(run.dist)
        preempt.ignore_late_signals()
        if run.tracker:
            run.tracker.log({"event": "done", "epoch": run.pos.epoch,
                             "global_step": run.pos.global_step,
                             "best_top1_err": run.pos.best_top1_err})
            run.tracker.finish(0)
        finished(run, Path(data_dir), already)
        return 0


def setup_run(cfg: Config, data_dir: Path, run_dir: Path, cleanup: contextlib.ExitStack,
              stop: preempt.StopFlag, init_from: str | Path | None = None,
              allow_other_shards: bool = False) -> Run:
    """Processes and devices, the shards, the model and its optimizer, the run dir's lock,
    the resumed position, and the tracker: everything the loop needs."""
    refuse_before_start(cfg, run_dir)
    dist = distributed.init("cuda" if pick_device(cfg.train.device).type == "cuda" else "cpu")
    device = pick_device(cfg.train.device, dist.local_rank)
    if cfg.data.batch_size % dist.world:
        raise Refused(f"data.batch_size = {cfg.data.batch_size} is not divisible by the "
                         f"world size {dist.world}")
    set_determinism(cfg.train.deterministic)
    classes = read_manifest(data_dir)["classes"]
    data = data_fingerprint(data_dir)          # before the slow start-up: stats.npz checked
    if len(classes) != cfg.model.num_classes:
        raise Refused(f"{data_dir}/manifest.json has {len(classes)} classes but "
                         f"model.num_classes = {cfg.model.num_classes}; set "
                         f"model.num_classes={len(classes)}")
    placed = place_model(cfg, device, dist)
    # What fixes the order of an epoch's samples (repro.data.order): a mid-epoch resume is
    # exact only if all of it is the same.
    stream = {"world": dist.world, "workers": max(1, cfg.data.workers), "seed": cfg.train.seed,
              "batch_size": cfg.data.batch_size, "shuffle_buffer": cfg.data.shuffle_buffer}
    run = Run(cfg, run_dir, dist, device, classes, split_shards(data_dir, "train"),
              split_shards(data_dir, "val"), placed, build_optimizer(cfg, placed.model),
              Schedule(cfg.schedule, cfg.optim.lr), make_normalizer(cfg, data_dir / STATS, device),
              stream, stop, tracker=None, pos=Position(), progress=progress_mode(cfg, dist),
              last_save=time.monotonic(), data=data)
    lock_run_dir(run, cleanup)
    resumed_from, restarted = resume(run, data_dir, allow_other_shards)
    run.first_step = run.pos.global_step
    if run.pos.epoch >= cfg.schedule.epochs and not run.pos.val_pending:
        return run                   # finished already: nothing to write (train() says so)
    loaded = load_weights_from(run, Path(init_from)) if init_from and not resumed_from else None
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        log = cfg.logging
        run.tracker = Tracker(run_dir, cfg.to_dict(), log.wandb, log.project, log.entity)
        run.tracker.log({"event": "data", "path": str(data_dir.resolve()), **run.data})
        if resumed_from is not None:
            p = run.pos
            run.tracker.log({"event": "resume", "checkpoint": str(resumed_from), "epoch": p.epoch,
                             "step": p.step, "global_step": p.global_step,
                             **({"epoch_restarted": True, "stream": stream} if restarted else {})})
        if loaded is not None:
            run.tracker.log({"event": "init_from", "checkpoint": str(init_from), **loaded})
        banner(run, data_dir, resumed_from)
    return run


def refuse_before_start(cfg: Config, run_dir: Path) -> None:
    """What would otherwise fail only after the run dir is made, or at the first step."""
    check_output(run_dir, directory=True)
    if cfg.model.in_channels != 3:
        raise ConfigError(f"model.in_channels = {cfg.model.in_channels}, but the shards hold "
                          f"RGB images: repro train needs 3 (the greyscale d2l variant trains "
                          f"with python -m repro.d2l)")


def set_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for it
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic


def progress_mode(cfg: Config, dist: DistContext) -> str:
    mode = cfg.logging.progress
    if mode == "auto":
        mode = "bar" if interactive() else "lines"
    return mode if dist.is_main else "off"


def lock_run_dir(run: Run, cleanup: contextlib.ExitStack) -> None:
    """One trainer per run dir; decided on the main rank, which all ranks then follow."""
    locked = ""
    if run.dist.is_main:
        try:
            cleanup.callback(checkpoint.lock_run(run.run_dir).close)
        except checkpoint.RunLocked as e:
            locked = str(e)
    if distributed.all_sum([float(bool(locked))], run.dist, run.device)[0]:
        raise checkpoint.RunLocked(locked or f"{run.run_dir} is being trained by another process")


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = param_groups(model, o.weight_decay, o.decay_biases)
    if o.name == "paper_sgd":
        return PaperSGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def resume(run: Run, data_dir: Path, allow_other_shards: bool = False) -> tuple[Path | None, bool]:
    """Load run_dir's newest usable checkpoint into the model, optimizer, schedule and
    run.pos, after checking that it belongs to this run and these shards. Returns its
    path (None for a new run) and whether the epoch starts again because the data
    stream's settings changed."""
    ckpt_path, state = checkpoint.load_latest(run.run_dir, map_location=run.device)
    if ckpt_path is None:
        return None, False
    if run.dist.is_main:
        checkpoint.check_best(run.run_dir / "checkpoints")
    changes = resume_changes(state["config"], run.cfg.to_dict())
    if changes:
        raise Refused(f"{ckpt_path} belongs to a run with other settings "
                         f"({'; '.join(changes)}); a resumed run keeps its settings: drop "
                         f"the overrides, or start a new run with another --out")
    check_shards(run, state, ckpt_path, data_dir, allow_other_shards)
    model = run.placed.model
    model.load_state_dict(state["model"])
    if isinstance(model, TowerAlexNet):  # checkpoints hold the single model's layout
        load_single_optimizer_state(run.optimizer, model, state["optimizer"])
    else:
        run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    run.pos = Position(state["epoch"], state["step"], state["global_step"], state["best_top1_err"],
                       state.get("val_pending", False))
    finished = run.pos.epoch >= run.cfg.schedule.epochs and not run.pos.val_pending
    if run.dist.is_main and not finished:             # a finished run: train() says so
        print(f"resuming {ckpt_path} at {where(run.pos)}", flush=True)
    # The order of a finished epoch's samples no longer matters.
    restart = state["stream"] != run.stream and run.pos.step > 0 and not run.pos.val_pending
    if restart:
        if run.dist.is_main:
            # The epoch's order depends on these; its rest cannot be picked out of a new order.
            print(f"warning: the data stream's settings changed ({state['stream']} -> "
                  f"{run.stream}): epoch {run.pos.epoch + 1} starts again, so the images of "
                  f"its first {run.pos.step} steps are trained on twice", file=sys.stderr)
        run.pos.step = 0
    return ckpt_path, restart


def load_weights_from(run: Run, path: Path) -> dict:
    """The paper's fine-tuning step (section 6): every layer whose weights have the same
    shape here is copied from `path`; the rest (fc8 when the class count differs, a new
    conv6) keep their fresh initialisation. Returns and prints which were which."""
    source = checkpoint.load(path, keys=("model",))["model"]
    state = run.placed.model.state_dict()
    loaded = [k for k, v in state.items() if k in source and source[k].shape == v.shape]
    state.update({k: source[k] for k in loaded})
    run.placed.model.load_state_dict(state)
    def layers(keys):
        return sorted({k.rsplit(".", 1)[0] for k in keys})
    copied = [n for n in layers(state) if all(k in loaded for k in state if k.startswith(n + "."))]
    fresh = [n for n in layers(state) if n not in copied]
    unused = [n for n in layers(source) if n not in copied]
    if run.dist.is_main:
        print(f"init from {path}: {', '.join(copied) or 'no layer'} copied; "
              f"{', '.join(fresh) or 'no layer'} freshly initialised; "
              f"{', '.join(unused) or 'no layer'} of it unused", flush=True)
    return {"copied": copied, "initialised": fresh, "unused": unused}


def check_shards(run: Run, state: dict, ckpt_path: Path, data_dir: Path, allowed: bool) -> None:
    """Refuse a resume on shards with other classes (the labels would mean other things);
    on another shard set or other statistics (the checkpoint's data_fingerprint; older
    checkpoints have none) unless allowed, when it goes on with a warning."""
    if state["classes"] != run.classes:
        raise Refused(f"{data_dir}/manifest.json lists other classes than the shards "
                         f"{ckpt_path} was trained on; resume on those shards")
    theirs = state.get("data") or {}
    differ = [what for key, what in (("stats_sha256", "stats.npz (mean image and PCA)"),
                                     ("manifest_sha256", "manifest.json (shard set)"))
              if key in theirs and theirs[key] != run.data[key]]
    if not differ:
        return
    text = f"{ckpt_path} was trained on shards with another {' and another '.join(differ)}"
    if not allowed:
        raise Refused(f"{text} than {data_dir}; resume on those shards, or pass "
                         f"--allow-other-shards to go on with these")
    if run.dist.is_main:
        print(f"warning: {text}; going on with {data_dir} (--allow-other-shards)",
              file=sys.stderr, flush=True)


def train_plan(cfg: Config, shards: list[Shard], epoch: int, dist: DistContext = DistContext(),
               skip: int = 0) -> EpochPlan:
    """This rank's share of a training epoch, past the `skip` steps already done."""
    return EpochPlan(shards=tuple(shards), epoch=epoch, seed=cfg.train.seed, rank=dist.rank,
                     world=dist.world, batch_size=cfg.data.batch_size // dist.world,
                     workers=max(1, cfg.data.workers),
                     crop="random" if cfg.augment.random_crop else "center",
                     crop_size=cfg.data.crop_size, flip=cfg.augment.flip, shuffle=True,
                     shuffle_buffer=cfg.data.shuffle_buffer, skip_batches=skip,
                     decode=cfg.data.decode, gpu_share=cfg.data.gpu_share)


def epoch_steps(cfg: Config, plan: EpochPlan) -> int:
    """Steps an epoch: a full pass, or data.steps_per_epoch if fewer."""
    return min(plan.steps, cfg.data.steps_per_epoch or plan.steps)


def train_one_epoch(run: Run) -> bool:
    """The rest of the current epoch's steps; False if a stop signal ended it early (a
    checkpoint is then written)."""
    cfg, pos = run.cfg, run.pos
    plan = train_plan(cfg, run.train_shards, pos.epoch, run.dist, skip=pos.step)
    steps = epoch_steps(cfg, plan)
    batches = device_loader(plan, run.device)
    for group in run.optimizer.param_groups:
        group["lr"] = run.schedule.lr
    stats = StepStats(run.device, run.dist.world)
    bar = tqdm(total=steps, initial=pos.step, desc=f"epoch {pos.epoch + 1}",
               disable=run.progress != "bar", dynamic_ncols=True)
    autocast = run.placed.autocast()
    for step in range(pos.step, steps):
        loss_sum, correct, n = sgd_step(run, plan, next(batches, None), step, autocast)
        pos.step, pos.global_step = step + 1, pos.global_step + 1
        pos.val_pending = pos.step == steps
        save_due = run.dist.is_main and (
            time.monotonic() - run.last_save > 60 * cfg.checkpoint.every_minutes)
        # The first step this process takes is logged too: a log shows the run alive and its
        # pace within a minute, not after log_every steps.
        log_now = (step == steps - 1 or (step + 1) % cfg.train.log_every == 0
                   or pos.global_step == run.first_step + 1)
        stop, save = stats.record(loss_sum, correct, n, run.stop.raised, save_due, pos,
                                  settle_now=log_now)
        if log_now or stop:      # a stop logs the steps since the last log line
            bar.update(pos.step - bar.n)
            log_train(run, stats.take(), bar, steps)
        if stop or save:
            save_checkpoint(run)
        if stop:
            return False
    bar.close()
    return True


def sgd_step(run: Run, plan: EpochPlan, batch, step: int, autocast):
    """Step `step` of the epoch on this rank's batch (None: its slice ran out)."""
    cfg, dist, device = run.cfg, run.dist, run.device
    images, labels, ys, xs, flips = batch or empty_batch(cfg.data.crop_size)
    images = device_images(images, ys, xs, flips, plan, device)
    labels = labels.to(device, non_blocking=True)
    keys = (cfg.train.seed, run.pos.epoch, step, dist.rank)
    torch.manual_seed(derived_seed(*keys))                      # the dropout masks
    x = run.normalizer(images, ys, xs, flips, step_generator(device, *keys))
    loss_sum, correct = train_step(run.placed.net, run.optimizer, x, labels, dist.world,
                                   plan.global_batch_size(step), autocast)
    return loss_sum, correct, len(labels)


def train_step(net, optimizer, x, labels, world: int, global_n: int, autocast=nullcontext()):
    """One SGD step on this rank's share of a global batch of `global_n` images.
    Returns this rank's (summed loss, correct count) as device tensors."""
    with autocast:
        logits = net(x)
    loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    # The gradient of the mean over the global batch; DDP averages over ranks, hence * world.
    (loss_sum * (world / global_n)).backward()
    optimizer.step()
    return loss_sum.detach(), (logits.argmax(1) == labels).sum().float()


def end_epoch(run: Run) -> bool:
    """Validate, step the schedule on the val error, checkpoint (best.pt if the best).
    False if a stop signal came during validation: the checkpoint is then written at
    once, the epoch trained and its validation pending, which a resume runs first."""
    pos = run.pos
    val = validate(run.placed.net, run.cfg, run.val_shards, run.normalizer, run.dist,
                   run.device, run.placed.autocast(), run.stop)
    if val is None:
        save_checkpoint(run)
        return False
    is_best = val["top1_err"] < pos.best_top1_err
    pos.best_top1_err = min(pos.best_top1_err, val["top1_err"])
    lr_used = run.schedule.lr
    run.schedule.step(pos.epoch, val["top1_err"])
    pos.epoch, pos.step, pos.val_pending = pos.epoch + 1, 0, False
    if run.tracker:
        run.tracker.log({"event": "val", "epoch": pos.epoch, "global_step": pos.global_step,
                         "lr": lr_used, "next_lr": run.schedule.lr, **val}, step=pos.global_step)
        print(f"epoch {pos.epoch} val top-1 {val['top1_err']:.2f}% top-5 {val['top5_err']:.2f}% "
              f"(n={val['n']}) lr {lr_used:g} -> {run.schedule.lr:g}", flush=True)
    save_checkpoint(run, is_best)
    return True


@torch.no_grad()
def validate(net, cfg: Config, shards, normalizer: Normalizer, dist: DistContext, device,
             autocast, stop: preempt.StopFlag | None = None) -> dict | None:
    """Centre-crop top-1/top-5 error over the val split (each rank its slice), the model
    fed as `repro eval` feeds it (Normalizer.eval_input). With `stop`: None as soon as a
    stop signal has come to any rank (all ranks agree before each batch)."""
    plan = in_order(shards, cfg.data.val_batch_size, max(1, cfg.data.workers),
                    cfg.data.val_limit, dist.rank, dist.world, cfg.data.decode, cfg.data.gpu_share)
    batches, totals = device_loader(plan, device), np.zeros(3)
    net.eval()
    try:
        for _ in range(plan.steps):        # as many on every rank; a short rank's last are None
            if stop is not None and distributed.any_rank(stop.raised, dist, device):
                return None
            batch = next(batches, None)
            if batch is None:
                continue
            images, labels, ys, xs, flips = batch
            x = normalizer.eval_input(device_images(images, ys, xs, flips, plan, device),
                                      cfg.data.crop_size)
            with autocast:
                logits = net(x)
            c1, c5 = topk_correct(logits.float(), labels.to(device), (1, 5))
            totals += (c1, c5, len(labels))
    finally:
        net.train()
    c1, c5, n = distributed.all_sum(totals.tolist(), dist, device)
    return {"top1_err": 100 * (1 - c1 / n), "top5_err": 100 * (1 - c5 / n), "n": int(n)}


def save_checkpoint(run: Run, is_best: bool = False) -> None:
    """A checkpoint at run.pos (the main rank writes it). The last loss read was computed
    before the latest update: the weights themselves are checked (on every rank, which hold
    the same weights, so all stop together), so that a checkpoint is never the first bad
    state."""
    run.last_save = time.monotonic()
    model, pos = run.placed.model, run.pos
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise NonFiniteLoss(f"the weights became non-finite by epoch {pos.epoch + 1} step {pos.step}")
    if not run.dist.is_main:
        return
    towers = isinstance(model, TowerAlexNet)
    path = checkpoint.save({
        "model": model.state_dict(),
        "optimizer": (single_optimizer_state(run.optimizer, model) if towers
                      else run.optimizer.state_dict()),
        "schedule": run.schedule.state_dict(), "config": run.cfg.to_dict(), "epoch": pos.epoch,
        "step": pos.step, "global_step": pos.global_step, "best_top1_err": pos.best_top1_err,
        "val_pending": pos.val_pending, "stream": run.stream, "classes": run.classes,
        "data": run.data,
    }, run.run_dir / "checkpoints", run.cfg.checkpoint.keep_last, is_best)
    run.tracker.log({"event": "checkpoint", "path": str(path), "epoch": pos.epoch,
                     "step": pos.step, "global_step": pos.global_step,
                     "val_pending": pos.val_pending})


def where(pos: Position) -> str:
    return f"epoch {pos.epoch + 1} step {pos.step}" + (
        " (validation pending)" if pos.val_pending else "")


def stopped(run: Run, wrote: bool = True) -> int:
    """After a stop signal: say so (one line), and exit for the requeue (75), or 130 on
    Ctrl-C. `wrote`: a checkpoint was written for it (else the one on disk is current)."""
    pos, status = run.pos, run.stop.exit_status
    if run.tracker:
        run.tracker.log({"event": "preempted", "epoch": pos.epoch, "step": pos.step,
                         "val_pending": pos.val_pending, "wrote": wrote, "status": status})
        run.tracker.finish(status)
    if run.dist.is_main:
        what = "interrupted" if status == preempt.EXIT_INTERRUPTED else "stop requested"
        saved = (f"checkpoint written at {where(pos)}" if wrote else
                 f"nothing trained since the last checkpoint ({where(pos)})" if pos.global_step
                 else "before the first step, nothing to save")
        print(f"{what}: {saved}; exiting with status {status} (run the same command to resume)",
              flush=True)
    return status


def nonfinite(run: Run, e: NonFiniteLoss) -> int:
    kept = checkpoint.latest(run.run_dir)     # every checkpoint written has finite weights
    print(f"error: {e}; " + (f"the last good checkpoint is kept: {kept}" if kept else
                             "no checkpoint had been written yet, so there is none to resume"),
          file=sys.stderr, flush=True)
    if run.tracker:
        run.tracker.log({"event": "nonfinite", "message": str(e)})
        run.tracker.finish(EXIT_NONFINITE)
    return EXIT_NONFINITE


class StepStats:
    """Each step's loss sum, correct count and image count, and the stop/save flags, summed
    over ranks and read one step late, so that the host never waits for the device except
    at log lines and when a flag asks for it. Every decision comes from all-reduced
    values, so all ranks agree on it. Keeps the tally since the last log line."""

    def __init__(self, device: torch.device, world: int):
        self.device, self.world = device, world
        self.pending = None          # (to_host's pair, epoch, step) of the previous step
        self.tally = np.zeros(3)     # loss sum, correct, images since the last take()
        self.since = time.perf_counter()

    def record(self, loss_sum, correct, n: int, stop: bool, save_due: bool, pos: Position,
               settle_now: bool) -> tuple[bool, bool]:
        """Add a step (pos: just after it); returns the (stop, save) flags settled so far."""
        # torch.full launches fills: no host-to-device copy that would wait for the step.
        stats = torch.stack([loss_sum, correct, *(torch.full((), float(v), device=self.device)
                                                  for v in (n, stop, save_due))])
        if self.world > 1:
            torch.distributed.all_reduce(stats)
        flags = self._settle() if self.pending else np.zeros(2)
        self.pending = (to_host(stats), pos.epoch, pos.step - 1)
        if settle_now or flags.any():
            flags += self._settle()
        return bool(flags[0]), bool(flags[1])

    def _settle(self) -> np.ndarray:
        pair, epoch, step = self.pending
        self.pending = None
        return settle(pair, self.tally, epoch, step)

    def take(self) -> dict | None:
        """The settled steps since the last take(): mean loss, top-1 error, images, img/s."""
        loss_sum, correct, n = self.tally
        now = time.perf_counter()
        seconds, self.since, self.tally = now - self.since, now, np.zeros(3)
        if not n:
            return None
        return {"loss": loss_sum / n, "top1_err": 100 * (1 - correct / n), "images": int(n),
                "images_per_s": n / seconds}


def to_host(stats: torch.Tensor) -> tuple:
    """Start a step's stats on their way to the host, and return at once: (host tensor,
    CUDA event that marks the copy done, or None off CUDA). Reading a CUDA tensor
    directly (.tolist()) would wait for everything queued since, the next step included."""
    if stats.device.type != "cuda":
        return stats, None
    host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
    host.copy_(stats, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done


def settle(pending: tuple, tally: np.ndarray, epoch: int, step: int) -> np.ndarray:
    """Read a step's all-reduced stats (from to_host): add them to the tally, stop on a
    non-finite loss, and return the (stop, save) flags."""
    stats, done = pending
    if done is not None:
        done.synchronize()
    loss_sum, correct, n, stop, save_due = stats.tolist()
    if not math.isfinite(loss_sum):
        raise NonFiniteLoss(f"loss is {loss_sum} at epoch {epoch + 1} step {step + 1}")
    tally += (loss_sum, correct, n)
    return np.array([stop > 0, save_due > 0], dtype=float)


def log_train(run: Run, averages: dict | None, bar, steps: int) -> None:
    """A train record (metrics.jsonl, W&B) for the steps since the last one; a progress
    line or the bar's postfix, with the ETAs of the epoch and the run."""
    if not (run.dist.is_main and averages):
        return
    pos, lr = run.pos, run.schedule.lr
    record = {"event": "train", "epoch": pos.epoch, "step": pos.step,
              "global_step": pos.global_step, **averages, "lr": lr}
    if run.device.type == "cuda":
        record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
    run.tracker.log(record, step=pos.global_step)
    per_step = run.pace.seconds_per_step(pos.global_step, averages, run.cfg.data.batch_size)
    epoch_left, run_left = steps_left(pos, steps, run.cfg.schedule.epochs)
    bar.set_postfix(loss=f"{averages['loss']:.3f}", img_s=f"{averages['images_per_s']:.0f}",
                    run_eta=duration(run_left * per_step))
    if run.progress == "lines":
        print(f"epoch {pos.epoch + 1} step {pos.step}/{steps} loss {averages['loss']:.4f} "
              f"lr {lr:g} {averages['images_per_s']:.0f} img/s, ETA epoch "
              f"{duration(epoch_left * per_step)}, run {duration(run_left * per_step)}", flush=True)


def steps_left(pos: Position, steps: int, epochs: int) -> tuple[int, int]:
    """Steps left in this epoch and in the whole run (each epoch has `steps`)."""
    in_epoch = steps - pos.step
    return in_epoch, in_epoch + (epochs - pos.epoch - 1) * steps


def banner(run: Run, data_dir: Path, resumed_from: Path | None) -> None:
    """Once, at the start (main rank): what this run is and where everything goes."""
    cfg, pos, t, d = run.cfg, run.pos, run.cfg.train, run.cfg.data
    steps = epoch_steps(cfg, train_plan(cfg, run.train_shards, pos.epoch, run.dist))
    n_train, n_val = (sum(s.count for s in shards) for shards in (run.train_shards, run.val_shards))
    head = (f"resuming {resumed_from} at epoch {pos.epoch + 1} step {pos.step}"
            if resumed_from else f"new run: {run.run_dir}")
    ckpts = run.run_dir / "checkpoints"
    lines = [
        head,
        f"  devices: {devices_text(run)}",
        f"  precision {t.precision}; channels_last {t.channels_last}, compile "
        f"{t.compile_mode if t.compile else False}, LRN {t.lrn_impl}, split_groups "
        f"{t.split_groups}, pad_input_channels {t.pad_input_channels}, deterministic "
        f"{t.deterministic}; JPEG decode {d.decode}, loader workers {max(1, d.workers)} a process",
        f"  run dir: {run.run_dir} (config.yaml, metrics.jsonl)",
        f"  data: {data_dir}: {n_train} train images, {n_val} val images"
        f"{f' (validating on the first {d.val_limit})' if d.val_limit else ''}, "
        f"{len(run.classes)} classes",
        f"  steps: {steps} an epoch (batches of {d.batch_size} images), "
        f"{steps * cfg.schedule.epochs} in {plural(cfg.schedule.epochs, 'epoch')} "
        f"({pos.global_step} done)",
        f"  checkpoints: {ckpts} at every epoch's end and every {cfg.checkpoint.every_minutes:g} "
        f"min; the last {cfg.checkpoint.keep_last} kept, and best.pt",
        f"  W&B: {wandb_text(run)}",
    ]
    print("\n".join(lines), flush=True)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def devices_text(run: Run) -> str:
    model, dist = run.placed.model, run.dist
    if isinstance(model, TowerAlexNet):
        where = f"the paper's two towers on {' and '.join(map(str, model.devices))}"
    else:
        where = str(run.device)
    if run.device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(run.device)})"
    elif run.device.type == "cpu":
        where += f" ({torch.get_num_threads()} threads)"
    return f"{where}; world size {dist.world}" + (" (DDP)" if dist.world > 1 else "")


def wandb_text(run: Run) -> str:
    log = run.cfg.logging
    if log.wandb == "disabled":
        return "disabled (logging.wandb); metrics.jsonl only"
    if run.tracker is None or run.tracker.wandb is None:
        return f"{log.wandb}, but it did not start (the warning above says why); metrics.jsonl only"
    return f"{log.wandb}, project {log.project}, run {run.tracker.wandb.id}"


def finished(run: Run, data_dir: Path, already: bool) -> None:
    """The last lines of a run (or of a command run again on a finished one): the best
    val error, where the best checkpoint is, and the command that evaluates it."""
    if not run.dist.is_main:
        return
    pos = run.pos
    metrics = run.run_dir / "metrics.jsonl"
    best = best_val(read_metrics(run.run_dir)) if metrics.is_file() else None
    if best is None:              # a run dir without its metrics: the checkpoint's number
        best = {"top1_err": pos.best_top1_err, "top5_err": math.nan, "epoch": "?"}
    ckpt = run.run_dir / "checkpoints" / "best.pt"
    ckpt = ckpt if ckpt.is_file() else ckpt.with_name("last.pt")
    print(f"{'already finished' if already else 'done'}: {plural(pos.epoch, 'epoch')}, best top-1 "
          f"{best['top1_err']:.2f}%, top-5 {best['top5_err']:.2f}% (val, centre crop, epoch "
          f"{best['epoch']})\nbest checkpoint: {ckpt}\nevaluate it with ten crops: repro eval "
          f"--checkpoint {ckpt} --data {data_dir} --ten-crop", flush=True)
