"""What the model is and what it may be asked to be, as plain data with no torch: Figure
2's layers, the options (AlexNet's arguments and the train section's switches) and the
rules they must meet. repro.model builds from these; a config is checked against them
when it is loaded, without importing PyTorch.

Each rule is written once and names what it refuses in the caller's terms, given by
`name`: AlexNet's argument (`dropout=1.5`, the default) or a config key
(`model.dropout = 1.5`, repro.config).
"""
from __future__ import annotations

import math
from typing import Callable

# Figure 2: conv layer -> (kernels, kernel size, stride). conv2..conv5 use "same"
# padding (kernel // 2); conv1's padding is a knob (0 in the paper at 227 input).
CONVS = {"conv1": (96, 11, 4), "conv2": (256, 5, 1), "conv3": (384, 3, 1),
         "conv4": (384, 3, 1), "conv5": (256, 3, 1)}
GROUPED = ("conv2", "conv4", "conv5")  # read only their own tower
REMOVABLE = ("conv3", "conv4")          # section 7: "removing any of the middle layers"
# The starred rows of Table 2 add "a sixth convolutional layer over the last pooling
# layer"; its shape is not given: ours is conv5's (256 3x3 kernels, "same" padding),
# reading both towers like conv3, followed by a ReLU and no pooling (PAPER_NOTES).
CONV6 = (256, 3, 1)
POOLED = ("conv1", "conv2", "conv5")   # followed by max pooling
HALVED = ("conv1", "conv2", "conv3", "conv4")  # section 3.2's one-GPU net halves these
FC_WIDTH = 4096
FCS = ("fc6", "fc7", "fc8")
PAPER_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")   # section 5
ACTIVATIONS = ("relu", "tanh")         # tanh: section 3.1's saturating comparison
INITS = ("paper", "torch", "xavier")   # paper: section 5; xavier: the d2l book's variant
LRN_MODES = {"paper": False, "cuda-convnet": True, "caffe": True}  # -> alpha_over_n; or "none"
LRN_IMPLS = ("auto", "reference", "fused", "triton")   # repro/lrn.py: one function, four ways
PRECISIONS = ("fp32", "tf32", "bf16")                  # repro/precision.py

Name = Callable[..., str]


def argument(arg: str, *value) -> str:
    """AlexNet's argument `arg`, with its value if given: `dropout=1.5`."""
    return f"{arg}={value[0]!r}" if value else arg


def conv_layers(removed_convs, extra_conv6: bool) -> list[str]:
    """The conv layers in order; a removed one's successor reads its predecessor's maps."""
    return [c for c in CONVS if c not in removed_convs] + ["conv6"] * extra_conv6


def conv_widths(half_kernels: bool) -> dict[str, int]:
    """Each conv layer's kernel count (section 3.2's one-GPU net halves some)."""
    return {name: out // 2 if half_kernels and name in HALVED else out
            for name, (out, _, _) in CONVS.items()}


def feature_size(input_size: int, conv1_padding: int, pool_kernel: int, pool_stride: int) -> int:
    """Side of conv5's pooled feature map (6 at the paper's 227 input).

    Sizes are floored like PyTorch's conv/pool (d2l's 224 input with padding 1 relies on it).
    """
    size = input_size
    for name, (_, kernel, stride) in CONVS.items():
        padding = conv1_padding if name == "conv1" else kernel // 2
        if size + 2 * padding < kernel:
            raise ValueError(f"with conv1_padding={conv1_padding} the map {name} reads is "
                             f"{size}x{size}, smaller than {name}'s {kernel}x{kernel} kernel")
        size = (size + 2 * padding - kernel) // stride + 1
        if name in POOLED:
            if size < pool_kernel:
                raise ValueError(f"pool_kernel={pool_kernel} is larger than the {size}x{size} "
                                 f"map after {name}")
            size = (size - pool_kernel) // pool_stride + 1
    return size


def check(*, num_classes, in_channels, input_size, groups, half_kernels, conv1_padding, lrn,
          lrn_size, lrn_alpha, lrn_beta, lrn_k, pool_kernel, pool_stride, dropout, init,
          weight_std, bias_one, bias_value, seed, activation, removed_convs, extra_conv6,
          name: Name = argument) -> None:
    """AlexNet's arguments, each refused with a ValueError that names it by `name`."""
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels),
                       ("input_size", input_size), ("lrn_size", lrn_size),
                       ("pool_kernel", pool_kernel), ("pool_stride", pool_stride)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name(arg)} must be a positive integer, got {value!r}")
    if not isinstance(conv1_padding, int) or conv1_padding < 0:
        raise ValueError(f"{name('conv1_padding')} must be a non-negative integer, "
                         f"got {conv1_padding!r}")
    for arg, value in (("lrn_alpha", lrn_alpha), ("lrn_k", lrn_k), ("weight_std", weight_std)):
        if not 0 <= value < math.inf:      # written so that NaN fails too
            raise ValueError(f"{name(arg)} must be >= 0 and finite, got {value!r}")
    if not 0 < lrn_beta < math.inf:
        raise ValueError(f"{name('lrn_beta')} must be > 0 and finite, got {lrn_beta!r}")
    if not math.isfinite(bias_value):
        raise ValueError(f"{name('bias_value')} must be finite, got {bias_value!r}")
    for arg, value, options in (("lrn", lrn, (*LRN_MODES, "none")), ("init", init, INITS),
                                ("activation", activation, ACTIVATIONS)):
        if value not in options:
            raise ValueError(f"{name(arg, value)} is not one of {', '.join(options)}")
    if not 0 <= dropout < 1:
        raise ValueError(f"{name('dropout')} must be in [0, 1), got {dropout!r}")
    if groups not in (1, 2):
        raise ValueError(f"{name('groups')} must be 1 or 2 (the paper's one or two towers), "
                         f"got {groups!r}")
    if half_kernels and groups != 1:
        raise ValueError(f"{name('half_kernels', True)} is the paper's one-GPU net and needs "
                         f"{name('groups', 1)}, got {groups!r}")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"{name('seed')} must be an int or None, got {seed!r}")
    if isinstance(removed_convs, str) or not set(removed_convs) <= set(REMOVABLE) \
            or len(removed_convs) > 1:
        raise ValueError(f"{name('removed_convs')} may name one of {', '.join(REMOVABLE)} "
                         f"(section 7 removes one middle layer), got {removed_convs!r}")
    layers = (*conv_layers(removed_convs, extra_conv6), *FCS)
    if isinstance(bias_one, str):
        raise ValueError(f"{name('bias_one')} must be a list of layer names, got {bias_one!r}")
    unknown = sorted(set(bias_one or ()) - set(layers))
    if unknown:
        raise ValueError(f"{name('bias_one')} names {unknown}, which this model does not have "
                         f"(its layers: {', '.join(layers)})")
    try:
        feature_size(input_size, conv1_padding, pool_kernel, pool_stride)
    except ValueError as e:
        raise ValueError(f"{name('input_size', input_size)} is too small for the model "
                         f"({e})") from None


def check_padding(pad_input_channels: int, in_channels: int, name: Name = argument) -> None:
    """train.pad_input_channels pads conv1's input up to that many channels, never below."""
    if 0 < pad_input_channels < in_channels:
        raise ValueError(f"{name('pad_input_channels', pad_input_channels)} is fewer than "
                         f"conv1's {in_channels} input channels ({name('in_channels', in_channels)}; "
                         f"0 turns the padding off)")


def check_towers(groups: int, convs: list[str], name: Name = argument) -> None:
    """train.parallel = towers splits the paper's two-group net, as its two GPUs held it."""
    towers = name("parallel", "towers")
    if groups != 2:
        raise ValueError(f"{towers} (the paper's two towers) needs the two-group model "
                         f"({name('groups', 2)}), got {groups!r}")
    if list(convs) != list(CONVS):
        raise ValueError(f"{towers} runs the paper's five conv layers, got {convs}: "
                         f"{name('removed_convs')} and {name('extra_conv6')} need "
                         f"{name('parallel', 'ddp')}")
