"""One SGD step, and its statistics read one step late: what every entry point's loop
(repro.train) runs, whatever its data and its net.

Determinism: `set_determinism` picks deterministic kernels (bit-identical reruns) or
cuDNN's fastest; randomness itself is re-seeded every step from (seed, epoch, step,
rank), so that it needs no state in a checkpoint.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from repro.exits import EXIT_NONFINITE, ReproError
from repro.optim import PaperSGD, param_groups


class NonFiniteLoss(ReproError):
    """The loss or the weights became NaN/inf (the loop keeps the last good checkpoint)."""
    exit_status = EXIT_NONFINITE


def set_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for it
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optim section's optimizer over the model's parameters (repro.optim.param_groups)."""
    o = cfg.optim
    groups = param_groups(model, o.weight_decay, o.decay_biases)
    if o.name == "paper_sgd":
        return PaperSGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


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


class StepStats:
    """Each step's loss sum, correct count and image count, and the stop/save flags, summed
    over ranks and read one step late, so that the host never waits for the device except
    at log lines and when a flag asks for it. Every decision comes from all-reduced
    values, so all ranks agree on it. Keeps the tally since the last log line, and over
    the epoch (as this process trained it)."""

    def __init__(self, device: torch.device, world: int):
        self.device, self.world = device, world
        self.pending = None          # (to_host's pair, epoch, step) of the previous step
        self.tally = np.zeros(3)     # loss sum, correct, images since the last take()
        self.epoch = np.zeros(3)     # the same since this object was made
        self.start = self.since = time.perf_counter()

    def record(self, loss_sum, correct, n: int, stop: bool, save_due: bool, epoch: int,
               step: int, settle_now: bool) -> tuple[bool, bool]:
        """Add step `step` of `epoch` (0-based); returns the (stop, save) flags settled so far."""
        # torch.full launches fills: no host-to-device copy that would wait for the step.
        stats = torch.stack([loss_sum, correct, *(torch.full((), float(v), device=self.device)
                                                  for v in (n, stop, save_due))])
        if self.world > 1:
            torch.distributed.all_reduce(stats)
        flags = self._settle() if self.pending else np.zeros(2)
        self.pending = (to_host(stats), epoch, step)
        if settle_now or flags.any():
            flags += self._settle()
        return bool(flags[0]), bool(flags[1])

    def _settle(self) -> np.ndarray:
        pair, epoch, step = self.pending
        self.pending = None
        before = self.tally.copy()
        flags = settle(pair, self.tally, epoch, step)
        self.epoch += self.tally - before
        return flags

    def take(self) -> dict | None:
        """The settled steps since the last take(): mean loss, top-1 error, images, img/s."""
        loss_sum, correct, n = self.tally
        now = time.perf_counter()
        seconds, self.since, self.tally = now - self.since, now, np.zeros(3)
        return averages(loss_sum, correct, n, seconds)


    def epoch_averages(self) -> dict | None:
        """The same over every settled step since this object was made."""
        return averages(*self.epoch, time.perf_counter() - self.start)


def averages(loss_sum: float, correct: float, n: float, seconds: float) -> dict | None:
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
