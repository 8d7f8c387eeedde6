"""The one training loop: `repro train`, `python -m repro.cifar` and `python -m repro.d2l`
differ only in the `Task` they bring (a data source and a net), so a guarantee proven
for one holds for all: the run dir and its lock, the banner, the epoch and step loop,
checkpoints with exact resume, stop signals and exit statuses, metrics.jsonl and W&B,
progress.

    train()  =  setup_run()                        devices, task, lock, resume, logging
                while epochs remain:
                    train_one_epoch()              SGD steps; checkpoint on a stop signal
                    end_epoch()                    validate, schedule step, checkpoint;
                                                   on a stop signal checkpoint at once

Everything random is derived from (seed, epoch, step, rank): the task's data order and
augmentation, and the dropout masks, re-seeded every step, so that a checkpoint needs
only the weights, the optimizer, the schedule and the `Position` to continue bit for bit.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from data_prep.atomic import check_output
from repro import checkpoint, console, distributed, preempt
from repro.augment import derived_seed
from repro.distributed import DistContext, pick_device
from repro.exits import EXIT_NONFINITE, Refused
from repro.placement import Placed
from repro.resume import Position, resume
from repro.step import NonFiniteLoss, StepStats, set_determinism, train_step
from repro.tracking import Tracker


class Task:
    """What an experiment brings to the loop: a data source and a net. A task sets these
    attributes and methods; the defaults below are what most tasks do alike.

    cfg         the config, with sections train (seed, deterministic), checkpoint and
                logging, and to_dict()/to_yaml()
    placed      repro.placement.Placed: the model, what runs it, its autocast
    optimizer, schedule (.lr, .apply(optimizer), .step(epoch, val_top1_err), state_dict())
    epochs, batch_size (global), log_every (steps between train records)
    data_path, data  where the data is, and what (real or generated, digests): recorded,
                checked on resume
    stream      what fixes an epoch's sample order (a resume checks it)
    val_name    what validate() measures, for the last line
    epoch_steps(epoch), batches(epoch, skip): this rank's (x, labels, global batch size)
                for each step from `skip` on
    validate(epoch, stop): {"top1_err", ...}; {} when nothing is measured this epoch;
                None when a stop signal came meanwhile
    describe()  the banner's data lines
    """
    data_name: str = "data"          # what its data files are, for the refusal below

    def state(self) -> dict:
        """More for the checkpoint."""
        return {}

    def check_resume(self, state: dict, ckpt_path: Path) -> None:
        if state["data"] != self.data:
            raise Refused(f"{ckpt_path} was trained on other {self.data_name} files than "
                          f"those in {self.data_path}; resume on those")

    def start(self) -> list[dict]:
        """A new run's first records, after its data record (e.g. fine-tuning's init)."""
        return []

    def epoch_line(self, run: Run, val: dict) -> str:
        return console.val_line(run, val)

    def done(self, run: Run) -> bool:
        """Finished before `epochs` (e.g. a target error reached)."""
        return False

    def next_steps(self, checkpoint: Path) -> list[str]:
        """Lines after a run's last."""
        return []


@dataclass
class Run:
    """What the training loop works with, set up once by setup_run()."""
    task: Task
    run_dir: Path
    dist: DistContext
    device: torch.device
    stop: preempt.StopFlag
    pos: Position = field(default_factory=Position)
    tracker: Tracker | None = None       # the main rank's metrics.jsonl (+ W&B)
    progress: str = "off"                # bar | lines | off
    last_save: float = field(default_factory=time.monotonic)
    first_step: int = 0                  # the global step this process started from
    pace: console.Pace = field(default_factory=console.Pace)
    epoch_train: dict | None = None      # the last epoch's training averages, as this process trained it

    @property
    def cfg(self):
        return self.task.cfg

    def finished(self) -> bool:
        return (self.pos.epoch >= self.task.epochs or self.task.done(self)) and not self.pos.val_pending


MakeTask = Callable[[DistContext, torch.device], Task]


def train(make_task: MakeTask, cfg, run_dir: str | Path, *,
          stop: preempt.StopFlag | None = None) -> int:
    """Train (or resume) the task `make_task(dist, device)` builds into run_dir; returns the
    process exit status. `stop`: the stop signals' flag, if the caller installed it
    earlier (repro.cli does, before torch loads)."""
    with contextlib.ExitStack() as cleanup:     # the run dir's lock, however train ends
        stop = stop or preempt.StopFlag()
        cleanup.callback(stop.close)
        run = setup_run(make_task, cfg, Path(run_dir), cleanup, stop)
        already = run.finished()
        try:
            while not run.finished():
                # A stop that came before (start-up, the last save): what is on disk is current.
                if distributed.any_rank(stop.raised, run.dist, run.device):
                    return stopped(run, wrote=False)
                if not (run.pos.val_pending or train_one_epoch(run)) or not end_epoch(run):
                    return stopped(run)
        except NonFiniteLoss as e:
            return nonfinite(run, e)
        finally:
            distributed.shutdown(run.dist)
        if run.tracker:
            run.tracker.log({"event": "done", "epoch": run.pos.epoch,
                             "global_step": run.pos.global_step,
                             "best_top1_err": run.pos.best_top1_err})
            run.tracker.finish(0)
        if run.dist.is_main:
            console.finished(run, already)
        return 0


def setup_run(make_task: MakeTask, cfg, run_dir: Path, cleanup: contextlib.ExitStack,
              stop: preempt.StopFlag) -> Run:
    """Processes and devices, the task, the run dir's lock, the resumed position, and the
    tracker: everything the loop needs."""
    check_output(run_dir, directory=True)
    dist = distributed.init("cuda" if pick_device(cfg.train.device).type == "cuda" else "cpu")
    device = pick_device(cfg.train.device, dist.local_rank)
    set_determinism(cfg.train.deterministic)
    run = Run(make_task(dist, device), run_dir, dist, device, stop,
              progress=console.progress_mode(cfg.logging.progress, dist.is_main))
    lock_run_dir(run, cleanup)
    resumed_from, restarted = resume(run)
    run.first_step = run.pos.global_step
    if run.finished():
        return run                   # finished already: nothing to write (train() says so)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        log = cfg.logging
        run.tracker = Tracker(run_dir, cfg.to_dict(), log.wandb, log.project, log.entity)
        run.tracker.log({"event": "data", "path": str(run.task.data_path), **run.task.data})
        if resumed_from is not None:
            p = run.pos
            run.tracker.log({"event": "resume", "checkpoint": str(resumed_from), "epoch": p.epoch,
                             "step": p.step, "global_step": p.global_step,
                             **({"epoch_restarted": True, "stream": run.task.stream}
                                if restarted else {})})
    for record in run.task.start() if resumed_from is None else ():
        if run.tracker:
            run.tracker.log(record)
    if dist.is_main:
        console.banner(run, resumed_from)
    return run


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


def train_one_epoch(run: Run) -> bool:
    """The rest of the current epoch's steps; False if a stop signal ended it early (a
    checkpoint is then written)."""
    task, cfg, pos = run.task, run.cfg, run.pos
    steps = task.epoch_steps(pos.epoch)
    task.schedule.apply(task.optimizer)
    stats = StepStats(run.device, run.dist.world)
    bar = tqdm(total=steps, initial=pos.step, desc=f"epoch {pos.epoch + 1}",
               disable=run.progress != "bar", dynamic_ncols=True)
    autocast = task.placed.autocast()
    batches = task.batches(pos.epoch, pos.step)
    for step in range(pos.step, steps):
        x, labels, global_n = next(batches)
        torch.manual_seed(derived_seed(cfg.train.seed, pos.epoch, step, run.dist.rank))  # dropout
        loss_sum, correct = train_step(task.placed.net, task.optimizer, x, labels,
                                       run.dist.world, global_n, autocast)
        pos.step, pos.global_step = step + 1, pos.global_step + 1
        pos.val_pending = pos.step == steps
        save_due = run.dist.is_main and (
            time.monotonic() - run.last_save > 60 * cfg.checkpoint.every_minutes)
        # The first step this process takes is logged too: a log shows the run alive and its
        # pace within a minute, not after log_every steps.
        on_interval = step == steps - 1 or (step + 1) % task.log_every == 0
        log_now = on_interval or pos.global_step == run.first_step + 1
        stop, save = stats.record(loss_sum, correct, len(labels), run.stop.raised, save_due,
                                  pos.epoch, step, settle_now=log_now)
        if log_now or stop:      # a stop logs the steps since the last log line
            bar.update(pos.step - bar.n)
            log_train(run, stats.take(), bar, steps, scheduled=on_interval)
        if stop or save:
            save_checkpoint(run)
        if stop:
            return False
    bar.close()
    run.epoch_train = stats.epoch_averages()
    return True


def log_train(run: Run, averages: dict | None, bar, steps: int, scheduled: bool) -> None:
    """A train record (metrics.jsonl, W&B) for the steps since the last one; a progress
    line or the bar's postfix. scheduled: at the log interval or the epoch's end (not a
    stop's, nor a process's first step's), so that curves drawn from them do not depend
    on when a run was stopped."""
    if not (run.dist.is_main and averages):
        return
    pos = run.pos
    record = {"event": "train", "epoch": pos.epoch, "step": pos.step,
              "global_step": pos.global_step, "epochs": pos.epoch + pos.step / steps,
              "scheduled": scheduled,
              **averages, "lr": run.task.schedule.lr}
    if run.device.type == "cuda":
        record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
    run.tracker.log(record, step=pos.global_step)
    console.step_line(run, averages, bar, steps)


def end_epoch(run: Run) -> bool:
    """Validate, step the schedule on the val error, checkpoint (best.pt if the best).
    False if a stop signal came during validation: the checkpoint is then written at
    once, the epoch trained and its validation pending, which a resume runs first."""
    task, pos = run.task, run.pos
    val = task.validate(pos.epoch, run.stop)
    if val is None:
        save_checkpoint(run)
        return False
    err = val.get("top1_err", math.inf)
    is_best = err < pos.best_top1_err
    pos.best_top1_err = min(pos.best_top1_err, err)
    lr_used = task.schedule.lr
    task.schedule.step(pos.epoch, err)
    pos.epoch, pos.step, pos.val_pending = pos.epoch + 1, 0, False
    if run.tracker:
        trained = {f"train_{k}": v for k, v in (run.epoch_train or {}).items()}
        run.tracker.log({"event": "val", "epoch": pos.epoch, "global_step": pos.global_step,
                         "lr": lr_used, "next_lr": task.schedule.lr, **val, **trained},
                        step=pos.global_step)
        print(task.epoch_line(run, val | {"lr": lr_used}), flush=True)
    save_checkpoint(run, is_best)
    return True


def save_checkpoint(run: Run, is_best: bool = False) -> None:
    """A checkpoint at run.pos (the main rank writes it). The last loss read was computed
    before the latest update: the weights themselves are checked (on every rank, which hold
    the same weights, so all stop together), so that a checkpoint is never the first bad
    state."""
    run.last_save = time.monotonic()
    task, pos = run.task, run.pos
    if not all(bool(torch.isfinite(p).all()) for p in task.placed.model.parameters()):
        raise NonFiniteLoss(f"the weights became non-finite by epoch {pos.epoch + 1} step {pos.step}")
    if not run.dist.is_main:
        return
    path = checkpoint.save({
        "model": task.placed.model.state_dict(),
        "optimizer": task.placed.optimizer_state(task.optimizer),
        "schedule": task.schedule.state_dict(), "config": run.cfg.to_dict(), "epoch": pos.epoch,
        "step": pos.step, "global_step": pos.global_step, "best_top1_err": pos.best_top1_err,
        "val_pending": pos.val_pending, "stream": task.stream, "data": task.data,
        **task.state(),
    }, run.run_dir / "checkpoints", run.cfg.checkpoint.keep_last, is_best)
    run.tracker.log({"event": "checkpoint", "path": str(path), "epoch": pos.epoch,
                     "step": pos.step, "global_step": pos.global_step,
                     "val_pending": pos.val_pending})


def stopped(run: Run, wrote: bool = True) -> int:
    """After a stop signal: say so (one line), and exit for the requeue (75), or 130 on
    Ctrl-C. `wrote`: a checkpoint was written for it (else the one on disk is current)."""
    pos, status = run.pos, run.stop.exit_status
    if run.tracker:
        run.tracker.log({"event": "preempted", "epoch": pos.epoch, "step": pos.step,
                         "val_pending": pos.val_pending, "wrote": wrote, "status": status})
        run.tracker.finish(status)
    if run.dist.is_main:
        console.stopped(run, wrote, status)
    return status


def nonfinite(run: Run, e: NonFiniteLoss) -> int:
    kept = checkpoint.latest(run.run_dir)     # every checkpoint written has finite weights
    console.nonfinite(e, kept)
    if run.tracker:
        run.tracker.log({"event": "nonfinite", "message": str(e)})
        run.tracker.finish(EXIT_NONFINITE)
    return EXIT_NONFINITE
