"""A locally connected layer: a convolution whose filters are not shared across positions.

cuda-convnet's `type=local` layer (LayerParams wiki, "Locally-connected layer with unshared
weights"): at every output position (y, x) its own `out_channels` filters of
in_channels x k x k, and its own bias for each of them (cuda-convnet's local layer has
modules x filters biases). The author's CIFAR-10 nets of the paper's section 3.3 end in
two of them (local3, local4: repro.cifar.nets).

Computed as unfold + one batched matrix product over positions: the input patches
(N, C*k*k, L) meet the weight (L, out, C*k*k) position by position.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LocallyConnected2d(nn.Module):
    """(N, in_channels, in_size, in_size) -> (N, out_channels, out_size, out_size) with
    out_size = (in_size + 2 * padding - kernel_size) // stride + 1, zero padding.
    weight: (out_size**2, out_channels, in_channels * k * k), positions in row-major
    order, each filter laid out as F.unfold lays out a patch (channel, row, column);
    bias: (out_channels, out_size, out_size)."""

    def __init__(self, in_channels: int, out_channels: int, in_size: int, kernel_size: int,
                 padding: int = 0, stride: int = 1):
        super().__init__()
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels),
                           ("in_size", in_size), ("kernel_size", kernel_size), ("stride", stride)):
            if value < 1:
                raise ValueError(f"LocallyConnected2d: {arg} must be >= 1, got {value}")
        out_size = (in_size + 2 * padding - kernel_size) // stride + 1
        if padding < 0 or out_size < 1:
            raise ValueError(f"LocallyConnected2d: a {kernel_size}x{kernel_size} kernel with "
                             f"padding {padding} does not fit a {in_size}x{in_size} input")
        self.in_channels, self.out_channels, self.in_size = in_channels, out_channels, in_size
        self.kernel_size, self.padding, self.stride, self.out_size = kernel_size, padding, stride, out_size
        self.weight = nn.Parameter(torch.empty(out_size * out_size, out_channels,
                                               in_channels * kernel_size * kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels, out_size, out_size))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, self.in_size, self.in_size):
            raise ValueError(f"LocallyConnected2d expects (N, {self.in_channels}, {self.in_size}, "
                             f"{self.in_size}) inputs, got {tuple(x.shape)}")
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        # (L, N, C*k*k) @ (L, C*k*k, out) -> (L, N, out): one matrix product per position
        out = torch.bmm(patches.permute(2, 0, 1), self.weight.transpose(1, 2))
        n, side = x.shape[0], self.out_size
        return out.permute(1, 2, 0).reshape(n, self.out_channels, side, side) + self.bias

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, in_size={self.in_size}, "
                f"kernel_size={self.kernel_size}, padding={self.padding}, stride={self.stride}")
