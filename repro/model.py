"""AlexNet as in Krizhevsky, Sutskever & Hinton (NIPS 2012), section 3 and Figure 2.

The paper splits every layer over two GPUs ("towers"); conv2, conv4 and conv5 read
only their own tower's maps, conv3 and the fully connected layers read both. Here
that is grouped convolution (groups=2) in one module per layer, so the state_dict
is one tensor per layer (conv1.weight ... fc8.bias) whatever the device layout.
"""

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from repro.lrn import LocalResponseNorm, set_impl as set_lrn_impl

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
LAYERS = (*CONVS, "conv6", "fc6", "fc7", "fc8")   # conv6 only with extra_conv6
PAPER_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")   # section 5
ACTIVATIONS = ("relu", "tanh")         # tanh: section 3.1's saturating comparison
INITS = ("paper", "torch", "xavier")   # paper: section 5; xavier: the d2l book's variant
LRN_MODES = {"paper": False, "cuda-convnet": True, "caffe": True}  # -> alpha_over_n; or "none"


def feature_size(input_size: int, conv1_padding: int, pool_kernel: int, pool_stride: int) -> int:
    """Side of conv5's pooled feature map (6 at the paper's 227 input).

    Sizes are floored like PyTorch's conv/pool (d2l's 224 input with padding 1 relies on it).
    """
    size = input_size
    for name, (_, kernel, stride) in CONVS.items():
        padding = conv1_padding if name == "conv1" else kernel // 2
        if size + 2 * padding < kernel:
            raise ValueError(f"input_size={input_size} with conv1_padding={conv1_padding} leaves a "
                             f"{size}x{size} map, smaller than {name}'s {kernel}x{kernel} kernel")
        size = (size + 2 * padding - kernel) // stride + 1
        if name in POOLED:
            if size < pool_kernel:
                raise ValueError(f"pool_kernel={pool_kernel} is larger than the {size}x{size} map "
                                 f"after {name} (input_size={input_size})")
            size = (size - pool_kernel) // pool_stride + 1
    return size


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same function) with two other ways to run it, set by
    set_impls for speed: split_groups runs a grouped convolution as one convolution per
    group (cuDNN's grouped kernels have been slow for some shapes and layouts), and
    pad_to appends zero input channels, with zero weights for them, up to pad_to
    (conv1 only: NHWC tensor-core kernels want 4 or 8 input channels, not RGB's 3)."""
    split_groups = False
    pad_to = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.pad_to > x.shape[1]:
            extra = (0, 0, 0, 0, 0, self.pad_to - x.shape[1])
            x, w = F.pad(x, extra), F.pad(w, extra)
        if self.split_groups and self.groups > 1:
            parts = zip(x.chunk(self.groups, 1), w.chunk(self.groups), self.bias.chunk(self.groups))
            return torch.cat([F.conv2d(xg, wg, bg, self.stride, self.padding) for xg, wg, bg in parts], 1)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, groups=self.groups)


def _check_arguments(*, num_classes, in_channels, input_size, groups, lrn_size, pool_kernel,
                     pool_stride, conv1_padding, lrn, dropout, init, bias_one, seed, activation,
                     removed_convs) -> None:
    """AlexNet's keyword arguments, each refused with a message naming it."""
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels),
                       ("input_size", input_size), ("groups", groups), ("lrn_size", lrn_size),
                       ("pool_kernel", pool_kernel), ("pool_stride", pool_stride)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    if not isinstance(conv1_padding, int) or conv1_padding < 0:
        raise ValueError(f"conv1_padding must be a non-negative integer, got {conv1_padding!r}")
    if lrn != "none" and lrn not in LRN_MODES:
        raise ValueError(f"lrn must be one of {[*LRN_MODES, 'none']}, got {lrn!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(bias_one, str) or not set(bias_one or ()) <= set(LAYERS):
        raise ValueError(f"bias_one must be a list of layer names from {list(LAYERS)}, got {bias_one!r}")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if isinstance(removed_convs, str) or not set(removed_convs) <= set(REMOVABLE) \
            or len(set(removed_convs)) > 1:
        raise ValueError(f"removed_convs may name one of {list(REMOVABLE)} (section 7 removes "
                         f"one middle layer), got {removed_convs!r}")


def _conv_widths(half_kernels: bool, groups: int) -> dict[str, int]:
    """Each conv layer's kernel count (section 3.2's one-GPU net halves some)."""
    if half_kernels and groups != 1:
        raise ValueError(f"half_kernels=True is the paper's one-GPU net and needs groups=1, got groups={groups}")
    widths = {name: out // 2 if half_kernels and name in HALVED else out
              for name, (out, _, _) in CONVS.items()}
    for name in GROUPED:
        previous = list(CONVS)[list(CONVS).index(name) - 1]
        if widths[previous] % groups or widths[name] % groups:
            raise ValueError(f"groups={groups} does not divide {name}'s channels "
                             f"({widths[previous]} in, {widths[name]} out)")
    return widths


def _act_then_lrn(activation, lrn, size, alpha, beta, k, groups) -> nn.Module:
    """norm1/norm2: the nonlinearity, then LRN (section 3.3: normalisation "after applying
    the ReLU nonlinearity"). ReLU and LRN are one module, so that the fast LRNs rectify as
    they read. Per tower: the paper's window never crosses to the other GPU's maps."""
    act = nn.ReLU() if activation == "relu" else nn.Tanh()
    if lrn == "none":
        return act
    norm = LocalResponseNorm(size, alpha, beta, k, alpha_over_n=LRN_MODES[lrn], groups=groups,
                             relu=activation == "relu")
    return norm if activation == "relu" else nn.Sequential(act, norm)


class AlexNet(nn.Module):
    def __init__(self, num_classes=1000, *, in_channels=3, input_size=227, groups=2, half_kernels=False,
                 conv1_padding=0, lrn="paper", lrn_size=5, lrn_alpha=1e-4, lrn_beta=0.75, lrn_k=2.0,
                 pool_kernel=3, pool_stride=2, dropout=0.5, init="paper", weight_std=0.01,
                 bias_one=None, bias_value=1.0, seed=None,
                 activation="relu", removed_convs=(), extra_conv6=False):
        super().__init__()
        _check_arguments(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                         groups=groups, lrn_size=lrn_size, pool_kernel=pool_kernel,
                         pool_stride=pool_stride, conv1_padding=conv1_padding, lrn=lrn,
                         dropout=dropout, init=init, bias_one=bias_one, seed=seed,
                         activation=activation, removed_convs=removed_convs)
        widths = _conv_widths(half_kernels, groups)
        self.activation = activation
        # The conv layers in order; a removed one's successor reads its predecessor's maps.
        self.convs = [c for c in CONVS if c not in removed_convs] + ["conv6"] * extra_conv6
        self.layers = (*self.convs, "fc6", "fc7", "fc8")
        if bias_one is None:        # the paper's, of the layers this model has
            bias_one = [name for name in PAPER_BIAS_ONE if name in self.layers]
        if set(bias_one) - set(self.layers):
            raise ValueError(f"bias_one names {sorted(set(bias_one) - set(self.layers))}, which "
                             f"this model does not have (its layers: {list(self.layers)})")
        side = feature_size(input_size, conv1_padding, pool_kernel, pool_stride)

        # A seed forks the global RNG, so seeded builds neither depend on nor advance it
        # (PyTorch's default init, which init="torch" keeps, draws from the global RNG).
        with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
            if seed is not None:
                torch.manual_seed(seed)
            channels = in_channels
            for name in self.convs:
                out, kernel, stride = (widths[name], *CONVS[name][1:]) if name in CONVS else CONV6
                padding = conv1_padding if name == "conv1" else kernel // 2
                setattr(self, name, Conv2d(channels, out, kernel, stride, padding,
                                           groups=groups if name in GROUPED else 1))
                channels = out
            self.fc6 = nn.Linear(channels * side * side, FC_WIDTH)
            self.fc7 = nn.Linear(FC_WIDTH, FC_WIDTH)
            self.fc8 = nn.Linear(FC_WIDTH, num_classes)
            if init == "paper":
                self._init_paper(weight_std, bias_one, bias_value)
            elif init == "xavier":
                # d2l's train_ch6: xavier_uniform_ weights, biases keep PyTorch's default.
                for name in self.layers:
                    nn.init.xavier_uniform_(getattr(self, name).weight)

        self.norm1, self.norm2 = (_act_then_lrn(activation, lrn, lrn_size, lrn_alpha, lrn_beta,
                                                lrn_k, groups) for _ in range(2))
        self.pool1, self.pool2, self.pool5 = (nn.MaxPool2d(pool_kernel, pool_stride) for _ in range(3))
        # nn.Dropout is inverted dropout: it scales kept units by 1/(1-p) while training and
        # is the identity at test time. The paper instead multiplies outputs by 0.5 at test
        # time; both give test-time activations equal to the training-time expectation.
        self.drop6, self.drop7 = nn.Dropout(dropout), nn.Dropout(dropout)

    @torch.no_grad()
    def _init_paper(self, weight_std, bias_one, bias_value):
        # Section 5: weights ~ N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0.
        # Biases of 1 give the ReLUs positive inputs early on.
        for name in self.layers:
            layer = getattr(self, name)
            layer.weight.normal_(0.0, weight_std)
            layer.bias.fill_(bias_value if name in bias_one else 0.0)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) if self.activation == "relu" else torch.tanh(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.norm1(self.conv1(x)))    # norm1, norm2: ReLU, then LRN
        x = self.pool2(self.norm2(self.conv2(x)))
        for name in self.convs[2:]:                  # conv3, conv4, conv5 (, conv6)
            x = self.act(getattr(self, name)(x))
            if name == "conv5":
                x = self.pool5(x)
        x = torch.flatten(x, 1)
        x = self.drop6(self.act(self.fc6(x)))
        x = self.drop7(self.act(self.fc7(x)))
        return self.fc8(x)  # logits; the softmax lives in the loss


def set_impls(model: nn.Module, train) -> None:
    """Apply the train section's implementation switches (lrn_impl, split_groups,
    pad_input_channels), none of which changes the function the model computes."""
    set_lrn_impl(model, train.lrn_impl)
    for m in model.modules():
        if isinstance(m, Conv2d):
            m.split_groups = train.split_groups
    pad = train.pad_input_channels
    if pad and pad < model.conv1.in_channels:
        raise ValueError(f"train.pad_input_channels={pad} is fewer than conv1's "
                         f"{model.conv1.in_channels} input channels")
    model.conv1.pad_to = pad


def build_model(model_cfg: dict) -> AlexNet:
    """AlexNet from a plain dict of AlexNet's keyword arguments (num_classes included)."""
    known = set(inspect.signature(AlexNet.__init__).parameters) - {"self"}
    unknown = sorted(set(model_cfg) - known)
    if unknown:
        raise ValueError(f"unknown model keys: {unknown}")
    return AlexNet(**model_cfg)
