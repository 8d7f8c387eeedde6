"""The author's CIFAR-10 nets behind the paper's Figure 1 (section 3.1) and its LRN check
on CIFAR-10 (section 3.3), written from cuda-convnet's example layer files.

The paper names no layers for either; its footnote 3 points to cuda-convnet's code and
parameter files. Each net below is one of those files, value for value (file and line
of each in PAPER_NOTES.md, "CIFAR-10"):
- "80sec": layers-80sec.cfg + layer-params-80sec.cfg, "26% error on CIFAR-10 in 80
  seconds": four hidden layers (conv1-3, fc64), whole 32x32 images. Figure 1's net.
- "13pct": layers-conv-local-13pct.cfg + its params: conv1-2 and two locally connected
  layers (local3-4), 24x24 crops, no response normalisation.
- "11pct": layers-conv-local-11pct.cfg + its params: the same shape with cmrnorm layers
  (and 64 filters in local3, wc 0.01 on fc10). The LRN claim runs it with and without them.

cuda-convnet's conventions, carried over:
- weights ~ N(0, initW), biases 0 (initB's default);
- a layer's `neuron=` acts on its output, so on a pool layer after the pooling;
- a pooling window may run over the map's edge (outputsX = ceil((size - sizeX) / stride)
  + 1, layer.py), and an average is over the window's pixels inside the map (kLocalPool's
  regionSize, cudaconv2/conv_util.cuh): PyTorch's ceil_mode=True, which does the same;
- cmrnorm: b_f = a_f * (1 + scale/size * sum a_g^2)^-pow over maps g in
  [f - size//2, f - size//2 + size), clipped (layer.py divides scale by size; the kernel
  adds 1): repro.lrn's formula with k = 1, alpha = scale, alpha_over_n = True;
- per layer, epsW for weights and epsB for biases, momentum momW/momB, weight decay wc on
  weights only, in the update v <- mom v - wc eps w - eps grad; w <- w + v: the paper's
  rule, repro.optim.PaperSGD, one parameter group per weight and per bias;
- a learning-rate drop lowers epsW only: the biases keep epsB (the 11pct params file,
  "Lower learning rates (epsW) by a factor of 10"; the Methodology page likewise);
- the 11% result was tested on 10 views, the 13% result on 9 (repro.cifar.data.VIEWS).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from repro.cifar.local import LocallyConnected2d
from repro.lrn import LocalResponseNorm

IMAGE_SIDE, CLASSES = 32, 10
NEURONS = {"relu": nn.ReLU, "tanh": nn.Tanh}   # Figure 1's switch: what the files call relu


@dataclass(frozen=True)
class Conv:
    """type=conv (shared=True) or type=local (shared=False, unshared filters)."""
    name: str
    filters: int
    size: int                   # filterSize
    padding: int
    init_w: float               # initW
    neuron: str = "ident"
    shared: bool = True


@dataclass(frozen=True)
class Pool:
    name: str
    kind: str                   # max | avg
    size: int = 3               # sizeX
    stride: int = 2
    neuron: str = "ident"


@dataclass(frozen=True)
class RNorm:
    """type=cmrnorm: response normalisation across maps (its scale/pow: the params file)."""
    name: str
    size: int
    scale: float
    pow: float


@dataclass(frozen=True)
class FC:
    name: str
    outputs: int
    init_w: float
    neuron: str = "ident"


@dataclass(frozen=True)
class Learn:
    """A layer-params section: epsW, epsB, momW (= momB in every file used), wc."""
    eps_w: float
    eps_b: float
    wc: float
    mom: float = 0.9


@dataclass(frozen=True)
class NetSpec:
    name: str
    layers: tuple
    learn: tuple                # ((layer name, Learn), ...)
    crop: int                   # 0: whole images; b: random (32-2b)^2 crops + flips
    schedule: tuple = ()        # epochs at epsW, then epsW/10, epsW/100, ... (epsB stays)
    source: str = ""
    test_views: str = "corners"  # its --multiview-test: a key of repro.cifar.data.VIEWS

    @property
    def input_side(self) -> int:
        return IMAGE_SIDE - 2 * self.crop

    def params_of(self, layer: str) -> Learn:
        return dict(self.learn)[layer]


def _learn(**sections: Learn) -> tuple:
    return tuple(sections.items())


CONV_LOCAL = "cuda-convnet trunk/example-layers/layers-conv-local-{}.cfg, layer-params-conv-local-{}.cfg"
NETS = {
    "80sec": NetSpec(
        "80sec",
        (Conv("conv1", 32, 5, 2, 1e-4), Pool("pool1", "max", neuron="relu"),
         Conv("conv2", 32, 5, 2, 0.01, "relu"), Pool("pool2", "avg"),
         Conv("conv3", 64, 5, 2, 0.01, "relu"), Pool("pool3", "avg"),
         FC("fc64", 64, 0.1, "relu"), FC("fc10", CLASSES, 0.1)),
        _learn(conv1=Learn(0.001, 0.002, 0.004), conv2=Learn(0.001, 0.002, 0.004),
               conv3=Learn(0.001, 0.002, 0.004), fc64=Learn(0.001, 0.002, 0.03),
               fc10=Learn(0.001, 0.002, 0.03)),
        crop=0, source="cuda-convnet trunk/example-layers/layers-80sec.cfg, layer-params-80sec.cfg"),
    "13pct": NetSpec(
        "13pct",
        (Conv("conv1", 64, 5, 2, 1e-4, "relu"), Pool("pool1", "max"),
         Conv("conv2", 64, 5, 2, 0.01, "relu"), Pool("pool2", "max"),
         Conv("local3", 32, 3, 1, 0.04, "relu", shared=False),
         Conv("local4", 32, 3, 1, 0.04, "relu", shared=False), FC("fc10", CLASSES, 0.01)),
        _learn(conv1=Learn(0.001, 0.002, 0.0), conv2=Learn(0.001, 0.002, 0.0),
               local3=Learn(0.001, 0.002, 0.004), local4=Learn(0.001, 0.002, 0.004),
               fc10=Learn(0.001, 0.002, 0.004)),
        crop=4, schedule=(140, 10, 10), source=CONV_LOCAL.format("13pct", "13pct"),
        test_views="grid"),
    "11pct": NetSpec(
        "11pct",
        (Conv("conv1", 64, 5, 2, 1e-4, "relu"), Pool("pool1", "max"),
         RNorm("rnorm1", 9, 0.001, 0.75),
         Conv("conv2", 64, 5, 2, 0.01, "relu"), RNorm("rnorm2", 9, 0.001, 0.75),
         Pool("pool2", "max"),
         Conv("local3", 64, 3, 1, 0.04, "relu", shared=False),
         Conv("local4", 32, 3, 1, 0.04, "relu", shared=False), FC("fc10", CLASSES, 0.01)),
        _learn(conv1=Learn(0.001, 0.002, 0.0), conv2=Learn(0.001, 0.002, 0.0),
               local3=Learn(0.001, 0.002, 0.004), local4=Learn(0.001, 0.002, 0.004),
               fc10=Learn(0.001, 0.002, 0.01)),
        crop=4, schedule=(500, 10, 10), source=CONV_LOCAL.format("11pct", "11pct")),
}


class Dense(nn.Linear):
    """type=fc: reads its input flattened."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


def _module(layer, channels: int, side: int) -> tuple[nn.Module, int, int]:
    """(the layer's module, its output channels, its output side)."""
    if isinstance(layer, Conv):
        out = (side + 2 * layer.padding - layer.size) + 1
        if layer.shared:
            return nn.Conv2d(channels, layer.filters, layer.size, padding=layer.padding), layer.filters, out
        return (LocallyConnected2d(channels, layer.filters, side, layer.size, layer.padding),
                layer.filters, out)
    if isinstance(layer, Pool):
        out = -(-(side - layer.size) // layer.stride) + 1            # ceil: windows may run over
        if layer.kind == "max":
            return nn.MaxPool2d(layer.size, layer.stride, ceil_mode=True), channels, out
        return nn.AvgPool2d(layer.size, layer.stride, ceil_mode=True), channels, out
    if isinstance(layer, RNorm):
        return (LocalResponseNorm(layer.size, layer.scale, layer.pow, k=1.0, alpha_over_n=True,
                                  impl="auto"), channels, side)
    if isinstance(layer, FC):
        return Dense(channels * side * side, layer.outputs), layer.outputs, 1
    raise TypeError(f"not a layer of a net spec: {layer!r}")


class CifarNet(nn.Sequential):
    """A NetSpec as modules named after its layers (conv1, pool1, rnorm1, ...), each
    `neuron=relu` as a module `<layer>_<neuron>` after it. neuron: what replaces the
    files' relu (Figure 1's tanh net); lrn=False leaves the rnorm layers out."""

    def __init__(self, spec: NetSpec, neuron: str = "relu", lrn: bool = True, seed: int | None = None):
        if neuron not in NEURONS:
            raise ValueError(f"neuron must be one of {list(NEURONS)}, got {neuron!r}")
        modules, channels, side = [], 3, spec.input_side
        with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
            if seed is not None:
                torch.manual_seed(seed)
            for layer in spec.layers:
                if isinstance(layer, RNorm) and not lrn:
                    continue
                module, channels, side = _module(layer, channels, side)
                if hasattr(module, "weight"):
                    with torch.no_grad():
                        module.weight.normal_(0.0, layer.init_w)
                        module.bias.zero_()
                modules.append((layer.name, module))
                if getattr(layer, "neuron", "ident") == "relu":
                    modules.append((f"{layer.name}_{neuron}", NEURONS[neuron]()))
        super().__init__(OrderedDict(modules))
        self.spec, self.neuron, self.lrn = spec, neuron, lrn


def param_groups(net: CifarNet, lr_scale: float = 1.0, regularise: bool = True) -> list[dict]:
    """One optimizer group per weight and per bias, with the params file's epsW / epsB
    (times lr_scale), momentum and wc (weights only; none when not regularise). Each group
    keeps its rate as "base_lr"; "lr_drops" says whether the schedule's drops apply to it
    (weights: epsW; biases keep epsB)."""
    groups = []
    for name, module in net.named_children():
        if not hasattr(module, "weight"):
            continue
        learn = net.spec.params_of(name)
        for kind, param, eps, wc, drops in (("weight", module.weight, learn.eps_w, learn.wc, True),
                                            ("bias", module.bias, learn.eps_b, 0.0, False)):
            lr = eps * lr_scale
            groups.append({"params": [param], "lr": lr, "base_lr": lr, "lr_drops": drops,
                           "momentum": learn.mom, "weight_decay": wc if regularise else 0.0,
                           "name": f"{name}.{kind}"})
    return groups
