"""One way to run a config's model: built, switched, placed and wrapped the same way by
every entry point (train, eval, figures, bench, d2l), with the input it expects.

The `train` section's implementation switches (LRN kernel, split groups, padded
input channels, channels_last, torch.compile, precision) change how the model runs,
never the function it computes; they are applied here and nowhere else.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from repro.augment import Normalizer
from repro.config import Config, model_kwargs
from repro.distributed import DistContext
from repro.exits import Refused
from repro.model import build_model, set_impls
from repro.precision import autocast_for
from repro.towers import TowerAlexNet, load_single_optimizer_state, single_optimizer_state


@dataclass
class Placed:
    """model: owns the weights (AlexNet, or TowerAlexNet over two devices): what the
    optimizer and the checkpoints see. net: what runs the forward pass (the model under
    DDP and torch.compile when asked). precision: repro.precision's name."""
    model: nn.Module
    net: nn.Module
    precision: str

    def autocast(self) -> AbstractContextManager:
        """The context the forward pass runs in; sets the process's fp32 math, so members
        of an ensemble may each have their own."""
        device = next(self.model.parameters()).device
        return autocast_for(self.precision, device)

    # Checkpoints hold the one-device model's layout, however it ran.
    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        if isinstance(self.model, TowerAlexNet):
            return single_optimizer_state(optimizer, self.model)
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if isinstance(self.model, TowerAlexNet):
            load_single_optimizer_state(optimizer, self.model, state)
        else:
            optimizer.load_state_dict(state)

    def devices(self, device: torch.device) -> str:
        """Where it runs, for the banner."""
        if isinstance(self.model, TowerAlexNet):
            where = f"the paper's two towers on {' and '.join(map(str, self.model.devices))}"
        else:
            where = str(device)
        if device.type == "cuda":
            return where + f" ({torch.cuda.get_device_name(device)})"
        return where + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "")


def place_model(cfg: Config, device: torch.device, dist: DistContext = DistContext(),
                training: bool = True, state: dict | None = None) -> Placed:
    """The config's model on its device(s), with `state` (a state_dict) loaded if given.
    training: as `repro train` runs it (the paper's two towers if train.parallel says so,
    DDP across ranks, torch.compile); else one device in eval mode, in fp32 on a CPU
    (bf16 there is slow, and no more precise than the GPU's)."""
    t = cfg.train
    model = build_model(model_kwargs(cfg))
    set_impls(model, t)
    if state is not None:
        model.load_state_dict(state)
    if training and t.parallel == "towers":
        model = _towers(cfg, model, device, dist)
    else:
        model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not training:
        precision = t.precision if device.type == "cuda" else "fp32"
        return Placed(model.eval(), model, precision)
    net = _ddp(cfg, model, device) if dist.world > 1 else model
    if t.compile:
        net = torch.compile(net, mode=t.compile_mode)
    return Placed(model, net, t.precision)


def _ddp(cfg: Config, model: nn.Module, device: torch.device) -> nn.Module:
    """The model under DDP, its gradient buckets already in their final layout. DDP reduces
    a process's first backward in one bucket, then re-buckets the gradients in the order
    they became ready; with 3 ranks or more the sums depend on the layout, so a resumed
    process, whose first step is the run's n-th, would step differently from the run it
    resumes. One backward of zeros before the real steps settles the layout alike in every
    process: each real step, resumed or not, is reduced the same way."""
    ddp = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    x = torch.zeros(1, cfg.model.in_channels, cfg.data.crop_size, cfg.data.crop_size,
                    device=device)
    with autocast_for(cfg.train.precision, device):
        out = ddp(x)
    (out.float().sum() * 0).backward()     # zero gradients, all-reduced; the weights stay
    model.zero_grad(set_to_none=True)
    return ddp


def _towers(cfg: Config, model: nn.Module, device: torch.device, dist: DistContext) -> TowerAlexNet:
    """The paper's two towers: one process driving two GPUs, or one device twice."""
    if cfg.train.split_groups or cfg.train.pad_input_channels:
        raise Refused("train.split_groups and train.pad_input_channels apply to the "
                         "one-device model; the towers run their own convolutions")
    if dist.world > 1:
        raise Refused("train.parallel = towers is one process driving two devices: "
                         "launch a single process (no torchrun or srun tasks)")
    two = device.type == "cuda" and torch.cuda.device_count() > 1
    return TowerAlexNet(model, (torch.device("cuda", 0), torch.device("cuda", 1))
                        if two else (device, device))


def make_normalizer(cfg: Config, stats_path: str | Path, device: torch.device,
                    training: bool = True) -> Normalizer:
    """The device half of the input pipeline (repro.augment), as the model runs: its
    memory format; in training also its dtype (bf16 under bf16 autocast) and compiled
    with the model."""
    t = cfg.train
    if not training:
        return Normalizer(stats_path, cfg.augment, device, t.channels_last)
    return Normalizer(stats_path, cfg.augment, device, t.channels_last,
                      torch.bfloat16 if t.precision == "bf16" else torch.float32,
                      compile=t.compile)
