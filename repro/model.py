"""AlexNet as in Krizhevsky, Sutskever & Hinton (NIPS 2012), section 3 and Figure 2.

The paper splits every layer over two GPUs ("towers"); conv2, conv4 and conv5 read
only their own tower's maps, conv3 and the fully connected layers read both. Here
that is grouped convolution (groups=2) in one module per layer, so the state_dict
is one tensor per layer (conv1.weight ... fc8.bias) whatever the device layout.
The layer table and the rules the arguments meet are repro/model_spec.py (no torch).
"""

import contextlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from repro.lrn import LocalResponseNorm, set_impl as set_lrn_impl
from repro.model_spec import (CONV6, CONVS, FC_WIDTH, FCS, GROUPED, LRN_MODES, PAPER_BIAS_ONE,
                              check, check_padding, conv_layers, conv_widths, feature_size)


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
        check(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
              groups=groups, half_kernels=half_kernels, conv1_padding=conv1_padding, lrn=lrn,
              lrn_size=lrn_size, lrn_alpha=lrn_alpha, lrn_beta=lrn_beta, lrn_k=lrn_k,
              pool_kernel=pool_kernel, pool_stride=pool_stride, dropout=dropout, init=init,
              weight_std=weight_std, bias_one=bias_one, bias_value=bias_value, seed=seed,
              activation=activation, removed_convs=removed_convs, extra_conv6=extra_conv6)
        widths = conv_widths(half_kernels)
        self.activation = activation
        self.convs = conv_layers(removed_convs, extra_conv6)
        self.layers = (*self.convs, *FCS)
        if bias_one is None:        # the paper's, of the layers this model has
            bias_one = [name for name in PAPER_BIAS_ONE if name in self.layers]
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
    check_padding(train.pad_input_channels, model.conv1.in_channels)
    model.conv1.pad_to = train.pad_input_channels


def build_model(model_cfg: dict) -> AlexNet:
    """AlexNet from a plain dict of AlexNet's keyword arguments (num_classes included)."""
    known = set(inspect.signature(AlexNet.__init__).parameters) - {"self"}
    unknown = sorted(set(model_cfg) - known)
    if unknown:
        raise ValueError(f"unknown model keys: {unknown}")
    return AlexNet(**model_cfg)
