"""`python -m repro.d2l`: d2l.ai's simplified AlexNet on Fashion-MNIST, trained the way
the book's train_ch6 trains it, by the project's one training loop (repro.train): the
same run dir, lock, checkpoints, exact resume, stop signals and exit statuses as
`repro train`.

    python -m repro.d2l [--config NAME_OR_FILE] --root DIR [--out RUN_DIR]
                        [--download | --generate N_TRAIN,N_TEST] [section.key=value ...]

Data as d2l.load_data_fashion_mnist(batch_size, resize=224): the four IDX files under DIR
(repro.fashion_mnist: DIR itself, as Debian's dataset-fashion-mnist installs them, or
DIR/FashionMNIST/raw), Resize(data.crop_size) then ToTensor (0..1, no mean subtraction,
no augmentation), shuffled training batches (the order drawn from (seed, epoch)). The
model is repro.model.build_model from the config, placed by repro.placement; its
model.init: xavier re-draws conv and linear weights with xavier_uniform_ as train_ch6
does. Each epoch prints train loss, train accuracy, test accuracy and training
examples/s. --generate writes a learnable stand-in of Fashion-MNIST's shapes under DIR
first, marked as generated (every run records which kind of data it read).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

import repro.train as loop
from repro import exits, fashion_mnist, preempt
from repro.augment import step_generator
from repro.config import Config, load_config
from repro.metrics import topk_correct
from repro.exits import Refused
from repro.placement import place_model
from repro.schedule import Schedule
from repro.step import build_optimizer
from repro.tracking import read_metrics


class D2LTask(loop.Task):
    """Fashion-MNIST held on the device, and the config's net."""
    data_name = "Fashion-MNIST"

    def __init__(self, cfg: Config, root: str | Path, dist, device: torch.device):
        if dist.world > 1:
            raise Refused("python -m repro.d2l runs in one process (no torchrun or srun tasks)")
        data = fashion_mnist.load(root)
        self.cfg, self.device, self.dist = cfg, device, dist
        self.data_path = data.folder.resolve()
        self.data = {**fashion_mnist.provenance(root), "train_examples": len(data.train_labels),
                     "test_examples": len(data.test_labels)}
        self.train_images = torch.tensor(data.train_images, device=device)
        self.train_labels = torch.tensor(data.train_labels, device=device)
        n_test = min(cfg.data.val_limit or len(data.test_labels), len(data.test_labels))
        self.test_images = torch.tensor(data.test_images[:n_test], device=device)
        self.test_labels = torch.tensor(data.test_labels[:n_test], device=device)
        self.placed = place_model(cfg, device, dist)
        self.optimizer = build_optimizer(cfg, self.placed.model)
        self.schedule = Schedule(cfg.schedule, cfg.optim.lr)
        self.epochs, self.batch_size = cfg.schedule.epochs, cfg.data.batch_size
        self.log_every = cfg.train.log_every
        self.val_name = "test"            # what the val records measure
        self.stream = {"seed": cfg.train.seed, "batch_size": cfg.data.batch_size}

    def input(self, images: torch.Tensor) -> torch.Tensor:
        x = fashion_mnist.d2l_input(images, self.cfg.data.crop_size)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else x

    def epoch_steps(self, epoch: int) -> int:
        steps = math.ceil(len(self.train_labels) / self.batch_size)
        return min(steps, self.cfg.data.steps_per_epoch or steps)

    def batches(self, epoch: int, skip: int):
        order = torch.randperm(len(self.train_labels), device=self.device,
                               generator=step_generator(self.device, self.cfg.train.seed, epoch))
        for step in range(skip, self.epoch_steps(epoch)):
            index = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.input(self.train_images[index]), self.train_labels[index], len(index)

    @torch.no_grad()
    def validate(self, epoch: int, stop: preempt.StopFlag) -> dict | None:
        net, totals = self.placed.net, np.zeros(3)
        net.eval()
        try:
            for start in range(0, len(self.test_labels), self.cfg.data.val_batch_size):
                if stop.raised:
                    return None
                end = start + self.cfg.data.val_batch_size
                with self.placed.autocast():
                    logits = net(self.input(self.test_images[start:end]))
                labels = self.test_labels[start:end]
                totals += (*topk_correct(logits.float(), labels, (1, 5)), len(labels))
        finally:
            net.train()
        c1, c5, n = totals
        return {"top1_err": 100 * (1 - c1 / n), "top5_err": 100 * (1 - c5 / n), "n": int(n),
                "test_acc": c1 / n}


    def describe(self) -> list[str]:
        d, n_test = self.data, len(self.test_labels)
        return [f"  data: {self.data_path}: {d['data']} Fashion-MNIST, {d['train_examples']} train "
                f"and {d['test_examples']} test examples"
                f"{f' (testing on the first {n_test})' if n_test < d['test_examples'] else ''}, "
                f"resized to {self.cfg.data.crop_size}; precision {self.cfg.train.precision}"]

    def epoch_line(self, run, val: dict) -> str:
        """d2l's line: loss, train acc, test acc, examples/s in training."""
        t = run.epoch_train
        trained = (f"loss {t['loss']:.3f}, train acc {1 - t['top1_err'] / 100:.3f}, "
                   if t else "")
        rate = f", {t['images_per_s']:.1f} examples/sec on {run.device}" if t else ""
        return f"epoch {run.pos.epoch}/{self.epochs}: {trained}test acc {val['test_acc']:.3f}{rate}"


def summary(run_dir: Path) -> dict:
    """d2l's final lines from the run's records: the last epoch's loss and accuracies,
    and examples/s over every epoch's training time."""
    vals = [r for r in read_metrics(run_dir) if r["event"] == "val" and "train_loss" in r]
    if not vals:
        return {}
    last = vals[-1]
    seconds = sum(r["train_images"] / r["train_images_per_s"] for r in vals)
    return {"loss": last["train_loss"], "train_acc": 1 - last["train_top1_err"] / 100,
            "test_acc": last["test_acc"], "examples_per_s": sum(r["train_images"] for r in vals) / seconds}


def run(cfg: Config, root, out: str | Path, stop: preempt.StopFlag | None = None) -> int:
    """Train (or resume) into `out`; returns the exit status, and prints d2l's last lines."""
    status = loop.train(lambda dist, device: D2LTask(cfg, root, dist, device), cfg, out, stop=stop)
    result = summary(Path(out)) if status == 0 else {}
    if result:
        print(f"loss {result['loss']:.3f}, train acc {result['train_acc']:.3f}, test acc "
              f"{result['test_acc']:.3f}\n{result['examples_per_s']:.1f} examples/sec", flush=True)
    return status


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m repro.d2l", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="d2l_fashion_mnist",
                   help="a config file, or the name of a shipped one")
    p.add_argument("--root", required=True,
                   help="the four IDX files (.gz or not) in DIR or DIR/FashionMNIST/raw, "
                        f"e.g. {fashion_mnist.SYSTEM_DIR}")
    p.add_argument("--out", default="d2l_run", help="the run directory (default d2l_run)")
    p.add_argument("--download", action="store_true", help="fetch Fashion-MNIST into --root first")
    p.add_argument("--generate", metavar="N_TRAIN,N_TEST",
                   help="first write a generated stand-in of that many images under --root")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    return p


@exits.entry_point
def main(argv=None) -> int:
    stop = preempt.StopFlag()      # before anything slow: a stop in the first instant counts
    args = parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.generate:
        counts = args.generate.split(",")
        if len(counts) != 2 or not all(c.strip().isdigit() for c in counts):
            raise Refused(f"--generate takes N_TRAIN,N_TEST (two counts), got {args.generate!r}")
        fashion_mnist.generate(args.root, *map(int, counts), cfg.train.seed)
    if args.download:
        from torchvision.datasets import FashionMNIST
        FashionMNIST(root=str(args.root), download=True)
    status = run(cfg, args.root, args.out, stop)
    preempt.ignore_late_signals()     # the run is over: a late warning must not kill the exit
    return status


if __name__ == "__main__":
    sys.exit(main())
