"""`repro train`: the paper's recipe (section 5) on 1..N processes, resumable exactly.

Everything random is derived from (seed, epoch, step, rank): the loader's
stream (repro.data), the PCA noise and the dropout masks are re-seeded every
step, so a checkpoint needs only the weights, the optimizer, the schedule and
the position (epoch, step) to continue bit for bit.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data_prep import interactive
from data_prep.manifest import STATS
from repro import checkpoint, distributed
from repro.augment import Normalizer, derived_seed, step_generator
from repro.config import Config, model_kwargs, resume_changes
from repro.data import (EpochPlan, device_images, device_loader, empty_batch, even_range,
                        read_manifest, split_shards)
from repro.distributed import pick_device
from repro.evaluate import topk_correct
from repro.model import build_model, set_impls
from repro.optim import PaperSGD, param_groups
from repro.precision import autocast_for
from repro.schedule import Schedule
from repro.towers import TowerAlexNet, load_single_optimizer_state, single_optimizer_state
from repro.tracking import Tracker

EXIT_PREEMPTED = 75   # EX_TEMPFAIL: a checkpoint was written on SIGUSR1/SIGTERM; run again to resume
EXIT_NONFINITE = 3    # the loss became NaN/inf; the last good checkpoint is kept


class NonFiniteLoss(RuntimeError):
    pass


def make_normalizer(cfg: Config, stats_path, device: torch.device) -> Normalizer:
    """The device half of the input pipeline, as the training config runs the model."""
    return Normalizer(stats_path, cfg.augment, device, cfg.train.channels_last,
                      torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32,
                      compile=cfg.train.compile)


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = param_groups(model, o.weight_decay, o.decay_biases)
    if o.name == "paper_sgd":
        return PaperSGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def place_model(cfg: Config, d, device: torch.device) -> torch.nn.Module:
    """The model on its device(s): one device (also under DDP), or the paper's two
    towers (train.parallel = towers: one process driving two GPUs, or one device twice)."""
    model = build_model(model_kwargs(cfg))
    set_impls(model, cfg.train)
    if cfg.train.parallel == "towers":
        if cfg.train.split_groups or cfg.train.pad_input_channels:
            raise SystemExit("train.split_groups and train.pad_input_channels apply to the "
                             "one-device model; the towers run their own convolutions")
        if d.world > 1:
            raise SystemExit("train.parallel = towers is one process driving two devices: "
                             "launch a single process (no torchrun or srun tasks)")
        two = device.type == "cuda" and torch.cuda.device_count() > 1
        model = TowerAlexNet(model, (torch.device("cuda", 0), torch.device("cuda", 1))
                             if two else (device, device))
    else:
        model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def check_classes(cfg: Config, manifest: dict, data_dir: Path) -> None:
    n = len(manifest["classes"])
    if n != cfg.model.num_classes:
        raise SystemExit(f"{data_dir}/manifest.json has {n} classes but model.num_classes = "
                         f"{cfg.model.num_classes}; set model.num_classes={n}")


class StopFlag:
    """Set by SIGUSR1/SIGTERM (SLURM's warning before a time limit or preemption)."""

    def __init__(self):
        self.raised = False
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.raised = True


def rank_batch_size(plan: EpochPlan, rank: int, step: int) -> int:
    lo, hi = even_range(plan.total, plan.world, rank)
    return max(0, min(plan.batch_size, hi - lo - step * plan.batch_size))


def make_plan(cfg: Config, shards, split: str, epoch: int, d, skip: int = 0) -> EpochPlan:
    train = split == "train"
    batch = cfg.data.batch_size if train else cfg.data.val_batch_size
    return EpochPlan(shards=tuple(shards), epoch=epoch, seed=cfg.train.seed, rank=d.rank,
                     world=d.world, batch_size=batch // d.world if train else batch,
                     workers=max(1, cfg.data.workers),
                     crop="random" if train and cfg.augment.random_crop else "center",
                     crop_size=cfg.data.crop_size, flip=train and cfg.augment.flip,
                     shuffle=train, shuffle_buffer=cfg.data.shuffle_buffer, skip_batches=skip,
                     limit=cfg.data.val_limit if not train else 0, decode=cfg.data.decode,
                     gpu_share=cfg.data.gpu_share)


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


@torch.no_grad()
def validate(model, cfg: Config, shards, normalizer: Normalizer, d, device, autocast) -> dict:
    """Centre-crop top-1/top-5 error over the val split (each rank its slice)."""
    model.eval()
    plan = make_plan(cfg, shards, "val", 0, d)
    totals = np.zeros(3)
    for images, labels, ys, xs, flips in device_loader(plan, device):
        images = device_images(images, ys, xs, flips, plan, device)
        x = normalizer(images, ys, xs, flips, None)
        with autocast:
            logits = model(x)
        c1, c5 = topk_correct(logits.float(), labels.to(device), (1, 5))
        totals += (c1, c5, len(labels))
    c1, c5, n = distributed.all_sum(totals.tolist(), d, device)
    model.train()
    return {"top1_err": 100 * (1 - c1 / n), "top5_err": 100 * (1 - c5 / n), "n": int(n)}


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path) -> int:
    """Train (or resume) into run_dir; returns the process exit status."""
    with contextlib.ExitStack() as cleanup:     # the run dir's lock, however train ends
        return _train(cfg, Path(data_dir), Path(run_dir), cleanup)


def _train(cfg: Config, data_dir: Path, run_dir: Path, cleanup: contextlib.ExitStack) -> int:
    d = distributed.init("cuda" if pick_device(cfg.train.device).type == "cuda" else "cpu")
    # Before the slow start-up (checkpoint load, W&B) so that a signal then is honoured too;
    # after init, so that torchrun can still stop ranks stuck in it.
    stop = StopFlag()
    device = pick_device(cfg.train.device, d.local_rank)
    if cfg.data.batch_size % d.world:
        raise SystemExit(f"data.batch_size = {cfg.data.batch_size} is not divisible by the "
                         f"world size {d.world}")
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for it
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    manifest = read_manifest(data_dir)
    check_classes(cfg, manifest, data_dir)
    train_shards, val_shards = split_shards(data_dir, "train"), split_shards(data_dir, "val")
    normalizer = make_normalizer(cfg, data_dir / STATS, device)

    model = place_model(cfg, d, device)
    towers = isinstance(model, TowerAlexNet)
    optimizer = build_optimizer(cfg, model)
    schedule = Schedule(cfg.schedule, cfg.optim.lr)
    # What fixes the order of an epoch's samples (repro.data): a mid-epoch resume is exact
    # only if all of it is the same.
    stream = {"world": d.world, "workers": max(1, cfg.data.workers), "seed": cfg.train.seed,
              "batch_size": cfg.data.batch_size, "shuffle_buffer": cfg.data.shuffle_buffer}
    # One trainer per run dir; decided on the main rank, which all ranks then follow.
    locked = ""
    if d.is_main:
        try:
            cleanup.callback(checkpoint.lock_run(run_dir).close)
        except checkpoint.RunLocked as e:
            locked = str(e)
    if distributed.all_sum([float(bool(locked))], d, device)[0]:
        raise checkpoint.RunLocked(locked or f"{run_dir} is being trained by another process")
    ckpt_path, (epoch, first_step, global_step, best, restart) = resume(
        cfg, run_dir, data_dir, manifest["classes"], model, optimizer, schedule, stream, d, device)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    tracker = Tracker(run_dir, cfg.to_dict(), cfg.logging.wandb, cfg.logging.project,
                      cfg.logging.entity) if d.is_main else None
    if tracker:
        tracker.log({"event": "data", "path": str(data_dir.resolve())})
    if tracker and ckpt_path is not None:
        tracker.log({"event": "resume", "checkpoint": str(ckpt_path), "epoch": epoch,
                     "step": first_step, "global_step": global_step,
                     **({"epoch_restarted": True, "stream": stream} if restart else {})})

    net = model
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net, mode=cfg.train.compile_mode)
    autocast = autocast_for(cfg.train.precision, device)
    last_save = time.monotonic()
    progress = cfg.logging.progress
    if progress == "auto":
        progress = "bar" if interactive() else "lines"

    def save(next_epoch: int, next_step: int, is_best: bool = False) -> None:
        nonlocal last_save
        last_save = time.monotonic()
        # The last loss read was computed before the latest update: check the weights
        # themselves (on every rank, which hold the same weights, so all stop together),
        # so that a checkpoint is never the first bad state.
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise NonFiniteLoss(f"the weights became non-finite by epoch {next_epoch + 1} step {next_step}")
        if not d.is_main:
            return
        path = checkpoint.save({
            "model": model.state_dict(),
            "optimizer": single_optimizer_state(optimizer, model) if towers else optimizer.state_dict(),
            "schedule": schedule.state_dict(), "config": cfg.to_dict(), "epoch": next_epoch,
            "step": next_step, "global_step": global_step, "best_top1_err": best,
            "stream": stream, "classes": manifest["classes"],
        }, run_dir / "checkpoints", cfg.checkpoint.keep_last, is_best)
        tracker.log({"event": "checkpoint", "path": str(path), "epoch": next_epoch,
                     "step": next_step, "global_step": global_step})

    try:
        while epoch < cfg.schedule.epochs:
            plan = make_plan(cfg, train_shards, "train", epoch, d, skip=first_step)
            if cfg.data.steps_per_epoch:
                plan_steps = min(plan.steps, cfg.data.steps_per_epoch)
            else:
                plan_steps = plan.steps
            batches = device_loader(plan, device)
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr
            window = np.zeros(3)        # loss sum, correct, count since the last log line
            t_window = time.perf_counter()
            pending = None              # the previous step's all-reduced stats (read one step late)
            bar = tqdm(total=plan_steps, initial=first_step, desc=f"epoch {epoch + 1}",
                       disable=not (progress == "bar" and d.is_main), dynamic_ncols=True)
            for step in range(first_step, plan_steps):
                batch = next(batches, None)
                if batch is None:       # this rank's slice is one sample short
                    batch = empty_batch(cfg.data.crop_size)
                images, labels, ys, xs, flips = batch
                images = device_images(images, ys, xs, flips, plan, device)
                labels = labels.to(device, non_blocking=True)
                torch.manual_seed(derived_seed(cfg.train.seed, epoch, step, d.rank))  # dropout
                x = normalizer(images, ys, xs, flips,
                               step_generator(device, cfg.train.seed, epoch, step, d.rank))
                global_n = sum(rank_batch_size(plan, r, step) for r in range(d.world))
                loss_sum, correct = train_step(net, optimizer, x, labels, d.world, global_n,
                                               autocast)
                global_step += 1
                save_due = d.is_main and (
                    time.monotonic() - last_save > 60 * cfg.checkpoint.every_minutes)
                # torch.full launches fills: no host-to-device copy that would wait for the step.
                stats = torch.stack([loss_sum, correct, *(
                    torch.full((), float(v), device=device)
                    for v in (len(labels), stop.raised, save_due))])
                if d.world > 1:
                    torch.distributed.all_reduce(stats)
                # Stats are read one step late so the host never waits for the device,
                # except at log lines and when a flag (stop, save) asks for it. Every
                # decision comes from all-reduced values, so all ranks agree on it.
                flags = np.zeros(2)
                if pending is not None:
                    flags += settle(pending, window, epoch, step - 1)
                pending = to_host(stats)
                log_now = step == plan_steps - 1 or (step + 1) % cfg.train.log_every == 0
                if log_now or flags.any():
                    flags += settle(pending, window, epoch, step)
                    pending = None
                if log_now:
                    bar.update(step + 1 - bar.n)
                    if d.is_main and window[2]:
                        log_train(tracker, bar, progress, window, time.perf_counter() - t_window,
                                  epoch, step, plan_steps, global_step, schedule.lr, device)
                    window[:] = 0
                    t_window = time.perf_counter()
                if flags.any():
                    save(epoch, step + 1)
                if flags[0]:
                    if d.is_main and window[2]:  # the steps since the last log line
                        log_train(tracker, bar, progress, window, time.perf_counter() - t_window,
                                  epoch, step, plan_steps, global_step, schedule.lr, device)
                    if tracker:
                        tracker.log({"event": "preempted", "epoch": epoch, "step": step + 1})
                        tracker.finish(EXIT_PREEMPTED)
                    print(f"stop requested: checkpoint written at epoch {epoch + 1} step {step + 1}; "
                          f"exiting with status {EXIT_PREEMPTED} (run the same command to resume)",
                          flush=True)
                    return EXIT_PREEMPTED
            bar.close()
            val = validate(net, cfg, val_shards, normalizer, d, device, autocast)
            is_best = val["top1_err"] < best
            best = min(best, val["top1_err"])
            lr_used = schedule.lr
            schedule.step(epoch, val["top1_err"])
            epoch, first_step = epoch + 1, 0
            if tracker:
                tracker.log({"event": "val", "epoch": epoch, "global_step": global_step,
                             "lr": lr_used, "next_lr": schedule.lr, **val}, step=global_step)
                print(f"epoch {epoch} val top-1 {val['top1_err']:.2f}% top-5 "
                      f"{val['top5_err']:.2f}% (n={val['n']}) lr {lr_used:g} -> {schedule.lr:g}",
                      flush=True)
            save(epoch, 0, is_best)
    except NonFiniteLoss as e:
        print(f"error: {e}; the last good checkpoint is kept in {run_dir / 'checkpoints'}",
              file=sys.stderr, flush=True)
        if tracker:
            tracker.log({"event": "nonfinite", "message": str(e)})
            tracker.finish(EXIT_NONFINITE)
        return EXIT_NONFINITE
    finally:
        distributed.shutdown(d)
    # Finished: a late time-limit warning must not kill the exiting process (Python drops
    # its handlers during shutdown, and SIGUSR1's default action is to terminate).
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if tracker:
        tracker.log({"event": "done", "epoch": epoch, "global_step": global_step,
                     "best_top1_err": best})
        tracker.finish(0)
    return 0


def resume(cfg: Config, run_dir: Path, data_dir: Path, classes: list[str], model, optimizer,
           schedule: Schedule, stream: dict, d, device) -> tuple[Path | None, tuple]:
    """Load run_dir's newest usable checkpoint into the model, optimizer and schedule, after
    checking that it belongs to this run and these shards. Returns its path (None for a
    new run) and where to go on: (epoch, step, global step, best val top-1 error, whether
    the epoch starts again because the data stream's settings changed)."""
    ckpt_path, state = checkpoint.load_latest(run_dir, map_location=device)
    if ckpt_path is None:
        return None, (0, 0, 0, float("inf"), False)
    changes = resume_changes(state.get("config", {}), cfg.to_dict())
    if changes:
        raise SystemExit(f"{ckpt_path} belongs to a run with other settings "
                         f"({'; '.join(changes)}); a resumed run keeps its settings: drop "
                         f"the overrides, or start a new run with another --out")
    if state.get("classes", classes) != classes:
        raise SystemExit(f"{data_dir}/manifest.json lists other classes than the shards "
                         f"{ckpt_path} was trained on; resume on those shards")
    model.load_state_dict(state["model"])
    if isinstance(model, TowerAlexNet):  # checkpoints hold the single model's layout
        load_single_optimizer_state(optimizer, model, state["optimizer"])
    else:
        optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    epoch, step = state["epoch"], state["step"]
    if d.is_main:
        print(f"resuming {ckpt_path} at epoch {epoch + 1} step {step}", flush=True)
    restart = bool(state.get("stream") != stream and step)
    if restart and d.is_main:
        # The epoch's order depends on these; its rest cannot be picked out of a new order.
        print(f"warning: the data stream's settings changed ({state.get('stream')} -> "
              f"{stream}): epoch {epoch + 1} starts again, so the images of its first "
              f"{step} steps are trained on twice", file=sys.stderr)
    if restart:
        step = 0
    return ckpt_path, (epoch, step, state["global_step"], state["best_top1_err"], restart)


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


def settle(pending: tuple, window: np.ndarray, epoch: int, step: int) -> np.ndarray:
    """Read a step's all-reduced stats (from to_host): add them to the log window, stop on
    a non-finite loss, and return the (stop, save) flags."""
    stats, done = pending
    if done is not None:
        done.synchronize()
    loss_sum, correct, n, stop, save_due = stats.tolist()
    if not math.isfinite(loss_sum):
        raise NonFiniteLoss(f"loss is {loss_sum} at epoch {epoch + 1} step {step + 1}")
    window += (loss_sum, correct, n)
    return np.array([stop > 0, save_due > 0], dtype=float)


def log_train(tracker, bar, progress, window, dt, epoch, step, steps, global_step, lr, device):
    record = {"event": "train", "epoch": epoch, "step": step + 1, "global_step": global_step,
              "loss": window[0] / window[2], "top1_err": 100 * (1 - window[1] / window[2]),
              "lr": lr, "images": int(window[2]), "images_per_s": window[2] / dt}
    if device.type == "cuda":
        record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    tracker.log(record, step=global_step)
    bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.0f}")
    if progress == "lines":
        print(f"epoch {epoch + 1} step {step + 1}/{steps} loss {record['loss']:.4f} lr {lr:g} "
              f"{record['images_per_s']:.0f} img/s", flush=True)
