"""`python -m repro.d2l`: d2l.ai's simplified AlexNet on Fashion-MNIST, trained the way
the book's train_ch6 trains it, with this project's model, optimizer and train step.

    python -m repro.d2l --config configs/d2l_fashion_mnist.yaml --root DIR [--download]
                        [--generate N_TRAIN,N_TEST] [--out RUN_DIR] [section.key=value ...]

Data as d2l.load_data_fashion_mnist(batch_size, resize=224): torchvision's
FashionMNIST under DIR (DIR/FashionMNIST/raw/*-ubyte; fetched only with --download),
Resize(data.crop_size) then ToTensor (values 0..1, no mean subtraction, no
augmentation), shuffled training batches. The model is repro.model.build_model from the
config (repro.placement.place_model, as every entry point builds it), whose
model.init: xavier re-draws conv and linear weights with xavier_uniform_
as train_ch6 does (biases keep PyTorch's default). Each epoch prints
train loss, train accuracy, test accuracy and training examples/s (time inside the
training steps, as d2l's Timer counts it); RUN_DIR gets config.yaml and metrics.jsonl.
--generate writes a learnable stand-in of Fashion-MNIST's shapes under DIR first, for
machines that cannot download the real set (throughput, tests).
"""
from __future__ import annotations

import argparse
import itertools
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch

from repro.config import Config, ConfigError, load_config
from repro.distributed import pick_device
from repro.placement import place_model
from repro.tracking import Tracker
from repro.train import build_optimizer, train_step


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (big-endian, unsigned bytes): magic 0x0000 08 <ndim>, the dims as uint32, data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def generate(root: str | Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Files of Fashion-MNIST's names and shapes (28x28 greyscale, labels 0-9) under
    root/FashionMNIST/raw: noise with a bright band whose row gives the class."""
    raw = Path(root) / "FashionMNIST" / "raw"
    if raw.exists() and any(raw.iterdir()):
        raise SystemExit(f"{raw} is not empty: --generate writes only where no data set is "
                         f"(it would overwrite the files there)")
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 28, 28))
        rows = 2 * labels[:, None] + np.arange(5)                    # (n, 5) rows of each band
        images[np.arange(n)[:, None], rows] += 200
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


def fashion_mnist(root: str | Path, size: int, download: bool):
    """(train, test) torchvision FashionMNIST datasets, Resize(size) then ToTensor."""
    from torchvision import datasets, transforms

    trans = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    try:
        return tuple(datasets.FashionMNIST(root=str(root), train=train, transform=trans, download=download)
                     for train in (True, False))
    except RuntimeError as e:
        raise SystemExit(f"Fashion-MNIST not found under {root}/FashionMNIST/raw ({e}); "
                         f"pass --download to fetch it") from None


def loaders(cfg: Config, root, download: bool, device: torch.device):
    train_set, test_set = fashion_mnist(root, cfg.data.crop_size, download)
    if cfg.data.val_limit:
        test_set = torch.utils.data.Subset(test_set, range(min(cfg.data.val_limit, len(test_set))))
    common = dict(num_workers=cfg.data.workers, pin_memory=device.type == "cuda")
    train = torch.utils.data.DataLoader(train_set, cfg.data.batch_size, shuffle=True,
                                        generator=torch.Generator().manual_seed(cfg.train.seed), **common)
    test = torch.utils.data.DataLoader(test_set, cfg.data.val_batch_size, shuffle=False, **common)
    return train, test


@torch.no_grad()
def accuracy(net, batches, device, autocast, channels_last: bool) -> float:
    net.eval()
    correct = total = 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            correct += (net(x).argmax(1) == y).sum().item()
        total += len(y)
    net.train()
    return correct / max(total, 1)


def train_epoch(cfg: Config, net, optimizer, batches, device, autocast, steps: int) -> tuple:
    """One epoch as train_ch6 runs it: (loss sum, correct, examples, seconds in the steps)."""
    loss_sum = correct = n = seconds = 0.0
    net.train()
    for x, y in itertools.islice(batches, steps):
        t0 = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, right = train_step(net, optimizer, x, y, world=1, global_n=len(y), autocast=autocast)
        loss_sum += loss.item()                  # waits for the step, as d2l's metric.add does
        correct += right.item()
        seconds += time.perf_counter() - t0
        n += len(y)
    return loss_sum, correct, n, seconds


def run(cfg: Config, root, *, download: bool = False, out: str | Path | None = None) -> dict:
    """Train and evaluate; returns the last epoch's metrics."""
    if cfg.schedule.epochs < 1:
        raise SystemExit("schedule.epochs must be at least 1")
    device = pick_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)               # dropout masks
    train_batches, test_batches = loaders(cfg, root, download, device)
    placed = place_model(cfg, device)
    net, optimizer, autocast = placed.net, build_optimizer(cfg, placed.model), placed.autocast()
    tracker = None
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml())
        tracker = Tracker(out, cfg.to_dict(), cfg.logging.wandb, cfg.logging.project, cfg.logging.entity)
        tracker.log({"event": "d2l", "root": str(root), "init": cfg.model.init, "device": str(device),
                     "train_examples": len(train_batches.dataset),
                     "test_examples": len(test_batches.dataset)})
    print(f"training on {device}", flush=True)
    steps = min(len(train_batches), cfg.data.steps_per_epoch or len(train_batches))
    total_examples, total_time, step = 0, 0.0, 0
    for epoch in range(cfg.schedule.epochs):
        loss_sum, correct, n, seconds = train_epoch(cfg, net, optimizer, train_batches, device,
                                                    autocast, steps)
        step, total_examples, total_time = step + steps, total_examples + n, total_time + seconds
        test_acc = accuracy(net, test_batches, device, autocast, cfg.train.channels_last)
        record = {"event": "epoch", "epoch": epoch + 1, "step": step, "loss": loss_sum / n,
                  "train_acc": correct / n, "test_acc": test_acc,
                  "examples_per_s": n / seconds, "examples": int(n)}
        print(f"epoch {epoch + 1}/{cfg.schedule.epochs}: loss {record['loss']:.3f}, train acc "
              f"{record['train_acc']:.3f}, test acc {test_acc:.3f}, "
              f"{record['examples_per_s']:.1f} examples/sec on {device}", flush=True)
        if tracker:
            tracker.log(record, step=step)
    # d2l's final lines: the last epoch's metrics; examples/s over all epochs' training time
    overall = total_examples / total_time
    print(f"loss {record['loss']:.3f}, train acc {record['train_acc']:.3f}, test acc "
          f"{record['test_acc']:.3f}")
    print(f"{overall:.1f} examples/sec on {device}", flush=True)
    if tracker:
        tracker.log({"event": "done", **{k: v for k, v in record.items() if k != "event"},
                     "examples_per_s_overall": overall}, step=step)
        tracker.finish(0)
    return record | {"examples_per_s_overall": overall}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m repro.d2l", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="d2l_fashion_mnist",
                        help="a config file, or the name of a shipped one")
    parser.add_argument("--root", required=True, help="torchvision root: ROOT/FashionMNIST/raw/*-ubyte")
    parser.add_argument("--download", action="store_true", help="fetch Fashion-MNIST into --root")
    parser.add_argument("--generate", metavar="N_TRAIN,N_TEST",
                        help="first write a generated stand-in of that many images under --root")
    parser.add_argument("--out", help="run directory for config.yaml and metrics.jsonl")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        parser.error(str(e))
    if args.generate:
        try:
            n_train, n_test = (int(n) for n in args.generate.split(","))
        except ValueError:
            parser.error(f"--generate takes N_TRAIN,N_TEST (two counts), got {args.generate!r}")
        generate(args.root, n_train, n_test, cfg.train.seed)
    run(cfg, args.root, download=args.download, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
