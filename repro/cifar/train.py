"""One training run of a CIFAR-10 net (repro.cifar.nets) the way cuda-convnet trained it,
with this project's pieces: the paper's update rule (repro.optim.PaperSGD, one group per
weight and bias with the params file's rates), its train step (repro.train.train_step),
checkpoints (repro.checkpoint, at every epoch's end: running the same run again resumes
it, or only re-tests it when it is done) and records (repro.tracking: RUN_DIR/metrics.jsonl,
W&B when asked).

The training error is what cuda-convnet printed and the paper's Figure 1 plots: the error
on the training batches as they are trained, `points_per_epoch` points an epoch (cuda-
convnet printed one per 10,000-image batch file: 5). Randomness (order, crops, mirrors)
is drawn from (seed, epoch), so a resumed run continues as if never stopped.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from data_prep import interactive
from repro import checkpoint
from repro.augment import step_generator
from repro.cifar.data import Cifar10, DeviceImages, mean_image
from repro.cifar.nets import NETS, CifarNet, param_groups
from repro.optim import PaperSGD
from repro.precision import autocast_for
from repro.tracking import Tracker
from repro.step import NonFiniteLoss, set_determinism, train_step


@dataclass(frozen=True)
class RunSpec:
    """What one run is; a run directory holds one, and refuses another on resume."""
    net: str                        # a key of repro.cifar.nets.NETS
    neuron: str = "relu"            # relu | tanh (Figure 1)
    lrn: bool = True                # False: the net without its rnorm layers
    lr_scale: float = 1.0           # times every epsW, epsB of the params file
    schedule: tuple = (1,)          # epochs at the files' rates, then each /10 for the next
    regularise: bool = True         # False: no weight decay (Figure 1: "no regularization")
    batch_size: int = 128           # cuda-convnet's --mini default
    seed: int = 0
    points_per_epoch: int = 5
    stop_below: float = 0.0         # stop after the epoch whose training error reaches it (%)


@dataclass(frozen=True)
class Logging:
    wandb: str = "disabled"         # online | offline | disabled
    project: str = "alexnet-repro-cifar"
    progress: str = "auto"          # auto | bar | lines | off


def feeds(data: Cifar10, border: int, device: torch.device) -> tuple[DeviceImages, DeviceImages]:
    """(train, test) on the device, both fed minus the training set's mean image."""
    mean = mean_image(data.train_images)
    return (DeviceImages(data.train_images, data.train_labels, mean, border, device),
            DeviceImages(data.test_images, data.test_labels, mean, border, device))


def lr_factor(schedule: tuple, epoch: int) -> float:
    """1 in the schedule's first phase, 1/10 in the second, ..."""
    ends = [sum(schedule[:i + 1]) for i in range(len(schedule))]
    return 10.0 ** -next((i for i, end in enumerate(ends) if epoch < end), len(schedule) - 1)


def reached(curve: list[dict], stop_below: float) -> bool:
    return stop_below > 0 and any(p["train_err"] <= stop_below for p in curve)


def train_epoch(run: RunSpec, net, optimizer, feed: DeviceImages, epoch: int, bar) -> list[dict]:
    """One pass over the training images in a random order; the training-error points."""
    device = feed.labels.device
    g = step_generator(device, run.seed, epoch)
    order = torch.randperm(len(feed), generator=g, device=device)
    steps = math.ceil(len(feed) / run.batch_size)
    edges = {math.ceil(steps * (k + 1) / run.points_per_epoch) for k in range(run.points_per_epoch)}
    tally, n, points, since = torch.zeros(2, device=device), 0, [], time.perf_counter()
    for step in range(steps):
        x, y = feed.train_batch(order[step * run.batch_size:(step + 1) * run.batch_size], g)
        loss_sum, correct = train_step(net, optimizer, x, y, world=1, global_n=len(y))
        tally, n = tally + torch.stack([loss_sum, correct]), n + len(y)
        bar.update(1)
        if step + 1 in edges:
            loss, right = tally.tolist()           # waits for the steps: a few times an epoch
            if not math.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss} in epoch {epoch + 1}")
            now = time.perf_counter()
            points.append({"epoch": epoch + (step + 1) / steps, "train_err": 100 * (1 - right / n),
                           "loss": loss / n, "images_per_s": n / (now - since)})
            tally, n, since = torch.zeros(2, device=device), 0, now
    return points


@torch.no_grad()
def test_error(net, feed: DeviceImages, batch: int = 1000) -> dict:
    """Error (%) on the centre crop and, for the cropped nets, on the mean softmax of the
    9 views (cuda-convnet's --multiview-test, how its 11% and 13% were measured)."""
    net.eval()
    wrong = {"centre": 0, "9view": 0}
    for start in range(0, len(feed), batch):
        index = torch.arange(start, min(start + batch, len(feed)), device=feed.labels.device)
        labels = feed.labels[index]
        centre = net(feed.views(index, multiview=False)[0])
        wrong["centre"] += (centre.argmax(1) != labels).sum().item()
        if feed.border:
            probs = sum(net(v).softmax(1) for v in feed.views(index, multiview=True))
            wrong["9view"] += (probs.argmax(1) != labels).sum().item()
    net.train()
    out = {"test_err_centre": 100 * wrong["centre"] / len(feed)}
    if feed.border:
        out["test_err_9view"] = 100 * wrong["9view"] / len(feed)
    out["test_err"] = out.get("test_err_9view", out["test_err_centre"])
    return out


@dataclass
class Progress:
    """Where a run is: what its checkpoints record."""
    epoch: int = 0                  # epochs done
    global_step: int = 0
    curve: list = field(default_factory=list)


def resume(out: Path, run: RunSpec, net, optimizer) -> Progress:
    """Progress from out's newest checkpoint (loaded into net and optimizer), if any."""
    path, state = checkpoint.load_latest(out, map_location=next(net.parameters()).device)
    if path is None:
        return Progress()
    if state.get("run") != asdict(run):
        raise SystemExit(f"{path} belongs to another run ({state.get('run')}, not {asdict(run)}); "
                         f"delete {out} or choose another --out")
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return Progress(state["epoch"], state["global_step"], state["curve"])


def progress_mode(logging: Logging) -> str:
    mode = logging.progress
    return ("bar" if interactive() else "lines") if mode == "auto" else mode


def train_run(run: RunSpec, train_feed: DeviceImages, test_feed: DeviceImages | None,
              out: str | Path, logging: Logging = Logging()) -> dict:
    """Train (or resume, or only re-test when done) the run in `out`: its curve, test
    errors (when test_feed is given) and seconds per epoch (of the epochs run now)."""
    out, device = Path(out), train_feed.labels.device
    autocast_for("fp32", device)                    # IEEE fp32, as cuda-convnet computed
    set_determinism(False)                          # cuDNN picks its fastest kernels
    net = CifarNet(NETS[run.net], run.neuron, run.lrn, seed=run.seed).to(device)
    groups = param_groups(net, run.lr_scale, run.regularise)
    optimizer = PaperSGD(groups, lr=groups[0]["lr"], momentum=0.9, weight_decay=0.0)
    with checkpoint.lock_run(out):
        progress = resume(out, run, net, optimizer)
        tracker = Tracker(out, asdict(run), logging.wandb, logging.project)
        tracker.log({"event": "cifar_run", "net": run.net, "device": str(device),
                     "train_images": len(train_feed), "resumed_at_epoch": progress.epoch})
        seconds = train_epochs(run, net, optimizer, train_feed, out, tracker,
                               progress_mode(logging), progress)
        result = {"run": asdict(run), "curve": progress.curve, "epochs": progress.epoch,
                  "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None}
        if test_feed is not None:
            result |= test_error(net, test_feed)
            tracker.log({"event": "val", "split": "test", "epoch": progress.epoch,
                         **{k: v for k, v in result.items() if k.startswith("test_err")}},
                        step=progress.global_step)
        tracker.log({"event": "done", "epoch": progress.epoch,
                     "seconds_per_epoch": result["seconds_per_epoch"]})
        tracker.finish(0)
    return result


def train_epochs(run: RunSpec, net, optimizer, feed: DeviceImages, out: Path, tracker: Tracker,
                 mode: str, progress: Progress) -> list[float]:
    """The run's remaining epochs, each checkpointed and logged; their seconds."""
    total, seconds = sum(run.schedule), []
    steps = math.ceil(len(feed) / run.batch_size)
    while progress.epoch < total and not reached(progress.curve, run.stop_below):
        factor = lr_factor(run.schedule, progress.epoch)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        t0 = time.perf_counter()
        with tqdm(total=steps, disable=mode != "bar", leave=False,
                  desc=f"{out.name} epoch {progress.epoch + 1}") as bar:
            points = train_epoch(run, net, optimizer, feed, progress.epoch, bar)
        seconds.append(time.perf_counter() - t0)
        progress.epoch, progress.global_step = progress.epoch + 1, progress.global_step + steps
        progress.curve += points
        checkpoint.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                         "schedule": list(run.schedule), "epoch": progress.epoch, "step": 0,
                         "global_step": progress.global_step, "run": asdict(run),
                         "curve": progress.curve}, out / "checkpoints", keep_last=1, is_best=False)
        for p in points:
            tracker.log({"event": "train", **p, "lr_factor": factor})
        record = {"event": "epoch", "epoch": progress.epoch, "train_err": points[-1]["train_err"],
                  "loss": sum(p["loss"] for p in points) / len(points), "lr_factor": factor,
                  "seconds": seconds[-1], "images_per_s": len(feed) / seconds[-1]}
        tracker.log(record, step=progress.global_step)
        if mode != "off":
            print(f"{out.name} epoch {progress.epoch}/{total}: training error "
                  f"{record['train_err']:.2f}% loss {record['loss']:.4f} lr x{factor:g}, "
                  f"{seconds[-1]:.1f} s ({record['images_per_s']:.0f} img/s)", flush=True)
    return seconds
