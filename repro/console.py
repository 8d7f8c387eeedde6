"""What a training run says on the console (the main rank): the banner, a line per log
interval with its ETAs, the end of a run, a stop and a divergence. The records
themselves go to metrics.jsonl (repro.train)."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

from data_prep import interactive
from data_prep.progress import duration
from repro.exits import EXIT_INTERRUPTED
from repro.tracking import best_val, read_metrics


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


def progress_mode(mode: str, is_main: bool) -> str:
    """logging.progress resolved: auto is the bar on a terminal, else lines; only the main
    rank shows any."""
    if mode == "auto":
        mode = "bar" if interactive() else "lines"
    return mode if is_main else "off"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def steps_left(pos, steps: int, epochs: int) -> tuple[int, int]:
    """Steps left in this epoch and in the whole run (each epoch has `steps`)."""
    in_epoch = steps - pos.step
    return in_epoch, in_epoch + (epochs - pos.epoch - 1) * steps


def step_line(run, averages: dict, bar, steps: int) -> None:
    """The bar's postfix, or a progress line, with the ETAs of the epoch and the run."""
    pos, task = run.pos, run.task
    per_step = run.pace.seconds_per_step(pos.global_step, averages, task.batch_size)
    epoch_left, run_left = steps_left(pos, steps, task.epochs)
    bar.set_postfix(loss=f"{averages['loss']:.3f}", img_s=f"{averages['images_per_s']:.0f}",
                    run_eta=duration(run_left * per_step))
    if run.progress == "lines":
        print(f"epoch {pos.epoch + 1} step {pos.step}/{steps} loss {averages['loss']:.4f} "
              f"lr {task.schedule.lr:g} {averages['images_per_s']:.0f} img/s, ETA epoch "
              f"{duration(epoch_left * per_step)}, run {duration(run_left * per_step)}", flush=True)


def val_line(run, val: dict) -> str:
    """An epoch's end as `repro train` prints it."""
    return (f"epoch {run.pos.epoch} val top-1 {val['top1_err']:.2f}% top-5 {val['top5_err']:.2f}% "
            f"(n={val['n']}) lr {val['lr']:g} -> {run.task.schedule.lr:g}")


def banner(run, resumed_from) -> None:
    """Once, at the start: what this run is and where everything goes."""
    task, pos, cfg = run.task, run.pos, run.cfg
    steps = task.epoch_steps(pos.epoch)
    head = (f"resuming {resumed_from} at {pos.where()}" if resumed_from
            else f"new run: {run.run_dir}")
    lines = [
        head,
        f"  devices: {task.placed.devices(run.device)}; world size {run.dist.world}"
        + (" (DDP)" if run.dist.world > 1 else ""),
        *task.describe(),
        f"  run dir: {run.run_dir} (config.yaml, metrics.jsonl)",
        f"  steps: {steps} an epoch (batches of {task.batch_size} images), {steps * task.epochs} in "
        f"{plural(task.epochs, 'epoch')} ({pos.global_step} done)",
        f"  checkpoints: {run.run_dir / 'checkpoints'} at every epoch's end and every "
        f"{cfg.checkpoint.every_minutes:g} min; the last {cfg.checkpoint.keep_last} kept, and best.pt",
        f"  W&B: {wandb_text(run)}",
    ]
    print("\n".join(lines), flush=True)


def wandb_text(run) -> str:
    log = run.cfg.logging
    if log.wandb == "disabled":
        return "disabled (logging.wandb); metrics.jsonl only"
    if run.tracker is None or run.tracker.wandb is None:
        return f"{log.wandb}, but it did not start (the warning above says why); metrics.jsonl only"
    return f"{log.wandb}, project {log.project}, run {run.tracker.wandb.id}"


def finished(run, already: bool) -> None:
    """The last lines of a run (or of a command run again on a finished one): the best
    val error and where the best checkpoint is; the task adds what to do next."""
    pos = run.pos
    metrics = run.run_dir / "metrics.jsonl"
    best = best_val(read_metrics(run.run_dir)) if metrics.is_file() else None
    if best is None:              # a run dir without its metrics: the checkpoint's number
        best = {"top1_err": pos.best_top1_err, "top5_err": math.nan, "epoch": "?"}
    ckpt = run.run_dir / "checkpoints" / "best.pt"
    ckpt = ckpt if ckpt.is_file() else ckpt.with_name("last.pt")
    lines = [f"{'already finished' if already else 'done'}: {plural(pos.epoch, 'epoch')}"]
    if math.isfinite(best["top1_err"]):
        lines[0] += (f", best top-1 {best['top1_err']:.2f}%"
                     + (f", top-5 {best['top5_err']:.2f}%" if "top5_err" in best else "")
                     + f" ({run.task.val_name}, epoch {best['epoch']})")
    lines.append(f"best checkpoint: {ckpt}")
    print("\n".join(lines + run.task.next_steps(ckpt)), flush=True)


def stopped(run, wrote: bool, status: int) -> None:
    pos = run.pos
    what = "interrupted" if status == EXIT_INTERRUPTED else "stop requested"
    saved = (f"checkpoint written at {pos.where()}" if wrote else
             f"nothing trained since the last checkpoint ({pos.where()})" if pos.global_step
             else "before the first step, nothing to save")
    print(f"{what}: {saved}; exiting with status {status} (run the same command to resume)",
          flush=True)


def nonfinite(e: Exception, kept) -> None:
    print(f"error: {e}; " + (f"the last good checkpoint is kept: {kept}" if kept else
                             "no checkpoint had been written yet, so there is none to resume"),
          file=sys.stderr, flush=True)
