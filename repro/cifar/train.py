"""One training run of a CIFAR-10 net (repro.cifar.nets) the way cuda-convnet trained it,
as a task of the project's one training loop (repro.train: run dir and lock, checkpoints,
exact resume, stop signals, exit statuses, metrics.jsonl and W&B).

cuda-convnet's recipe: the training batches in their fixed file order (data_batch_1..5,
each in file order; repro.cifar.data.file_minibatches), random crops and mirrors drawn
from (seed, epoch, step), the paper's update rule (repro.optim.PaperSGD) with one group
per weight and bias at the params file's rates, and its schedule: `optim.phases`
epochs at those rates, each later phase's weight rates (epsW) /10 again, the biases' rate
(epsB) kept. The training error is what cuda-convnet printed and the paper's Figure 1
plots: the error on the training batches as they are trained, `train.points_per_epoch`
points an epoch (cuda-convnet printed one per 10,000-image batch file: 5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

import repro.train as loop
from repro import preempt
from repro.augment import step_generator
from repro.cifar.data import Cifar10, DeviceImages, file_minibatches, mean_image
from repro.cifar.nets import NETS, CifarNet, param_groups
from repro.config import CheckpointConfig, ConfigError, LoggingConfig, Sections
from repro.exits import EXIT_NONFINITE
from repro.optim import PaperSGD
from repro.placement import Placed
from repro.precision import autocast_for
from repro.step import NonFiniteLoss
from repro.tracking import read_metrics


@dataclass
class NetConfig:
    name: str = "80sec"             # a key of repro.cifar.nets.NETS
    neuron: str = "relu"            # relu | tanh (Figure 1)
    lrn: bool = True                # False: the net without its rnorm layers


@dataclass
class OptimConfig:
    lr_scale: float = 1.0           # times every epsW, epsB of the params file
    regularise: bool = True         # False: no weight decay (Figure 1: "no regularization")
    phases: list[int] = field(default_factory=lambda: [1])  # epochs at the files' rates, then /10 ...


@dataclass
class TrainConfig:
    batch_size: int = 128           # cuda-convnet's --mini default
    points_per_epoch: int = 5       # training-error points an epoch (one per batch file)
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda
    deterministic: bool = False
    stop_below: float = 0.0         # finish after the epoch whose training error reaches it (%)
    test: bool = True               # test error (centre + multiview) after the last epoch


@dataclass
class CifarConfig(Sections):
    net: NetConfig = field(default_factory=NetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(keep_last=1))
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(
        wandb="disabled", project="alexnet-repro-cifar"))

    def validate(self, where: str) -> None:
        choices = {"net.name": tuple(NETS), "net.neuron": ("relu", "tanh"),
                   "train.device": ("auto", "cpu", "cuda"),
                   "logging.wandb": ("online", "offline", "disabled"),
                   "logging.progress": ("auto", "bar", "lines", "off")}
        for key, options in choices.items():
            section, name = key.split(".")
            if getattr(getattr(self, section), name) not in options:
                raise ConfigError(f"{where}: {key} must be one of {', '.join(options)}")
        if not (self.optim.lr_scale > 0 and self.train.batch_size > 0
                and self.train.points_per_epoch > 0 and self.optim.phases
                and self.optim.phases[0] > 0 and min(self.optim.phases) >= 0):
            raise ConfigError(f"{where}: optim.lr_scale, train.batch_size, train.points_per_epoch "
                              f"and optim.phases[0] must be > 0 (later phases >= 0)")


def lr_factor(phases, epoch: int) -> float:
    """1 in the schedule's first phase, 1/10 in the second, ..."""
    ends = [sum(phases[:i + 1]) for i in range(len(phases))]
    return 10.0 ** -next((i for i, end in enumerate(ends) if epoch < end), len(phases) - 1)


class PhaseSchedule:
    """cuda-convnet's: the weights' rates /10 at each phase's start; the biases' kept."""

    def __init__(self, phases: list[int]):
        self.phases, self.epoch = list(phases), 0

    @property
    def lr(self) -> float:            # the factor on the params file's weight rates
        return lr_factor(self.phases, self.epoch)

    def apply(self, optimizer) -> None:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * (self.lr if group["lr_drops"] else 1.0)

    def step(self, epoch: int, val_err: float) -> float:
        self.epoch = epoch + 1
        return self.lr

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]


class CifarTask(loop.Task):
    """A CIFAR-10 net on the device-held set (`data`, read once for a whole experiment)."""
    data_name = "CIFAR-10"

    def __init__(self, cfg: CifarConfig, data: Cifar10, provenance: dict, device: torch.device):
        spec = NETS[cfg.net.name]
        autocast_for("fp32", device)                # IEEE fp32, as cuda-convnet computed
        self.cfg, self.device, self.data_path, self.data = cfg, device, data.folder, provenance
        mean = mean_image(data.train_images)
        self.feed = DeviceImages(data.train_images, data.train_labels, mean, spec.crop, device,
                                 spec.test_views)
        self.test_feed = (DeviceImages(data.test_images, data.test_labels, mean, spec.crop,
                                       device, spec.test_views) if cfg.train.test else None)
        self.ranges = file_minibatches(data.train_file_counts, cfg.train.batch_size)
        net = CifarNet(spec, cfg.net.neuron, cfg.net.lrn, seed=cfg.train.seed).to(device)
        self.placed = Placed(net, net, "fp32")
        groups = param_groups(net, cfg.optim.lr_scale, cfg.optim.regularise)
        self.optimizer = PaperSGD(groups, lr=groups[0]["lr"], momentum=0.9, weight_decay=0.0)
        self.schedule = PhaseSchedule(cfg.optim.phases)
        self.epochs, self.batch_size = sum(cfg.optim.phases), cfg.train.batch_size
        self.log_every = max(1, math.ceil(len(self.ranges) / cfg.train.points_per_epoch))
        self.val_name = "test"            # what the val records measure
        self.stream = {"seed": cfg.train.seed, "batch_size": cfg.train.batch_size}

    def epoch_steps(self, epoch: int) -> int:
        return len(self.ranges)

    def batches(self, epoch: int, skip: int):
        for step in range(skip, len(self.ranges)):
            a, b = self.ranges[step]
            g = step_generator(self.device, self.cfg.train.seed, epoch, step)
            x, y = self.feed.train_batch(torch.arange(a, b, device=self.device), g)
            yield x, y, b - a

    def validate(self, epoch: int, stop: preempt.StopFlag) -> dict | None:
        """The test error after the last epoch (cuda-convnet's --multiview-test), else nothing."""
        if self.test_feed is None or epoch + 1 < self.epochs:
            return {}
        return test_error(self.placed.net, self.test_feed)


    def describe(self) -> list[str]:
        c = self.cfg
        return [f"  net: {c.net.name}, {c.net.neuron}, LRN {c.net.lrn}, rates x{c.optim.lr_scale:g}"
                f"{'' if c.optim.regularise else ', no weight decay'}; IEEE fp32",
                f"  data: {self.data_path}: {self.data['data']} CIFAR-10, {len(self.feed)} train "
                f"images in file order"]

    def epoch_line(self, run, val: dict) -> str:
        t = run.epoch_train or {}
        text = (f"{run.run_dir.name} epoch {run.pos.epoch}/{self.epochs}: training error "
                f"{t.get('top1_err', math.nan):.2f}% loss {t.get('loss', math.nan):.4f} lr "
                f"x{val['lr']:g}, {t.get('images_per_s', math.nan):.0f} img/s")
        return text + (f"; test error {val['top1_err']:.2f}%" if "top1_err" in val else "")

    def done(self, run) -> bool:
        stop_below = self.cfg.train.stop_below
        return stop_below > 0 and any(p["train_err"] <= stop_below for p in curve(run.run_dir))


@torch.no_grad()
def test_error(net, feed: DeviceImages, batch: int = 1000) -> dict:
    """Error (%) on the centre crop and, for the cropped nets, on the mean softmax of the
    feed's test views (cuda-convnet's --multiview-test, how its 11% and 13% were measured)."""
    net.eval()
    wrong = {"centre": 0, "multiview": 0}
    for start in range(0, len(feed), batch):
        index = torch.arange(start, min(start + batch, len(feed)), device=feed.labels.device)
        labels = feed.labels[index]
        wrong["centre"] += (net(feed.views(index, multiview=False)[0]).argmax(1) != labels).sum().item()
        if feed.border:
            probs = sum(net(v).softmax(1) for v in feed.views(index, multiview=True))
            wrong["multiview"] += (probs.argmax(1) != labels).sum().item()
    net.train()
    out = {"test_err_centre": 100 * wrong["centre"] / len(feed), "n": len(feed)}
    if feed.border:
        out["test_err_multiview"] = 100 * wrong["multiview"] / len(feed)
    out["top1_err"] = out.get("test_err_multiview", out["test_err_centre"])
    return out


def curve(run_dir: Path) -> list[dict]:
    """The training-error points: the train records at the log interval (not those a stop
    or a process's first step added), as (epochs, train_err, loss)."""
    if not (run_dir / "metrics.jsonl").is_file():
        return []
    return [{"epoch": r["epochs"], "train_err": r["top1_err"], "loss": r["loss"],
             "images_per_s": r["images_per_s"]}
            for r in read_metrics(run_dir) if r["event"] == "train" and r.get("scheduled")]


def train_run(cfg: CifarConfig, data: Cifar10, provenance: dict, out: str | Path,
              stop: preempt.StopFlag | None = None) -> dict:
    """Train (or resume, or only report when done) the run in `out`: its curve, the
    test errors (when tested), epochs and seconds per epoch."""
    if stop is not None:
        stop.install()               # the run before this one ignored late signals when it ended
    status = loop.train(lambda dist, device: CifarTask(cfg, data, provenance, device), cfg, out,
                        stop=stop)
    if status == EXIT_NONFINITE:
        raise NonFiniteLoss(f"{out}: training diverged (the loss became non-finite)")
    if status:
        raise SystemExit(status)         # stopped by a signal: the experiment stops with it
    records = read_metrics(Path(out))
    vals = [r for r in records if r["event"] == "val" and "train_images" in r]
    seconds = [r["train_images"] / r["train_images_per_s"] for r in vals]
    tested = next((r for r in reversed(records) if r["event"] == "val" and "top1_err" in r), {})
    return {"config": cfg.to_dict(), "curve": curve(Path(out)),
            "epochs": max((r["epoch"] for r in records if r["event"] == "val"), default=0),
            "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
            **{k: v for k, v in tested.items() if k.startswith("test_err")},
            **({"test_err": tested["top1_err"]} if tested else {})}
