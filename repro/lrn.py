"""Local response normalisation across channels (paper section 3.3).

    b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2) ** beta,   j clipped to [0, C-1]

alpha_over_n=False is the paper's formula as printed; alpha_over_n=True divides
alpha by n, as the author's cuda-convnet code, Caffe and torch.nn.LocalResponseNorm do.
relu=True applies the ReLU first, inside the same pass (the paper normalises "after
applying the ReLU nonlinearity"): fused, the rectified maps are never written out.
With groups=2 each tower normalises over its own maps only: in the paper's
two-GPU net the window never crosses from one GPU's maps to the other's
(cuda-convnet2's layers-imagenet-2gpu-model.cfg has rnorm1a/rnorm1b, 48 maps each).

Three implementations of the same function (`impl`):
- "reference": the formula in torch ops, differentiated by autograd;
- "fused": a custom autograd Function with the backward written out,
      dL/da = g * s^-beta - 2 * c * beta * a * window_sum(g * b / s),
  which saves only the input and lets torch.compile fuse each pass;
- "triton": the same two passes as Triton kernels over channels_last tensors
  (repro/lrn_triton.py), used on CUDA; "auto" picks it when it applies.
"""

import torch
import torch.nn.functional as F
from torch import nn

from repro.model_spec import LRN_IMPLS


def _window_sum(t: torch.Tensor, size: int, groups: int, mirrored: bool = False) -> torch.Tensor:
    """Sum over the channel window [i - size//2, i + (size-1)//2] inside each group
    (mirrored: [i - (size-1)//2, i + size//2], the window's transpose, for the backward)."""
    if groups > 1:
        return torch.cat([_window_sum(part, size, 1, mirrored) for part in t.chunk(groups, dim=1)],
                         dim=1)
    channels = t.shape[1]
    before, after = size // 2, (size - 1) // 2
    if mirrored:
        before, after = after, before
    # Zero-pad the channel axis and add `size` shifted slices: plain adds keep any
    # memory format (NCHW or channels_last) and any dtype.
    padded = F.pad(t, (0, 0, 0, 0, before, after))
    total = padded.narrow(1, 0, channels)
    for j in range(1, size):
        total = total + padded.narrow(1, j, channels)
    return total


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                        alpha_over_n: bool, groups: int = 1, relu: bool = False) -> torch.Tensor:
    """The reference: normalise (N, C, H, W) (rectified first if relu) over windows of
    `size` adjacent channels of the same group."""
    if x.dim() != 4:
        raise ValueError(f"local_response_norm expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    coeff = alpha / size if alpha_over_n else alpha
    if relu:
        x = F.relu(x)
    return x / (_window_sum(x * x, size, groups) * coeff + k).pow(beta)


class _FusedLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, coeff, beta, k, groups, relu):
        ctx.save_for_backward(x)
        ctx.args = size, coeff, beta, k, groups, relu
        a = x.clamp(min=0) if relu else x
        return a * (k + coeff * _window_sum(a * a, size, groups)).pow(-beta)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        size, coeff, beta, k, groups, relu = ctx.args
        a = x.clamp(min=0) if relu else x
        s = k + coeff * _window_sum(a * a, size, groups)
        scale = s.pow(-beta)
        back = _window_sum(g * a * scale / s, size, groups, mirrored=True)
        da = g * scale - (2 * coeff * beta) * a * back
        return (torch.where(x > 0, da, 0) if relu else da), None, None, None, None, None, None


def fast_local_response_norm(x, size, alpha, beta, k, alpha_over_n, groups=1, impl="auto",
                             relu=False):
    """The same function as local_response_norm, by the implementation `impl`."""
    coeff = alpha / size if alpha_over_n else alpha
    if impl in ("auto", "triton") and x.is_cuda:
        from repro import lrn_triton
        if lrn_triton.applies(x, size, groups):
            return lrn_triton.lrn(x, size, coeff, beta, k, groups, relu)
        if impl == "triton":
            raise ValueError("the Triton LRN needs a channels_last CUDA tensor and an odd size")
    if impl == "reference":
        return local_response_norm(x, size, alpha, beta, k, alpha_over_n, groups, relu)
    return _FusedLRN.apply(x, size, coeff, beta, k, groups, relu)


def _known(impl: str) -> str:
    if impl not in LRN_IMPLS:
        raise ValueError(f"impl must be one of {LRN_IMPLS}, got {impl!r}")
    return impl


class LocalResponseNorm(nn.Module):
    def __init__(self, size: int, alpha: float, beta: float, k: float, alpha_over_n: bool,
                 groups: int = 1, impl: str = "reference", relu: bool = False):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.alpha_over_n, self.groups, self.relu = alpha_over_n, groups, relu
        self.impl = _known(impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_local_response_norm(x, self.size, self.alpha, self.beta, self.k,
                                        self.alpha_over_n, self.groups, self.impl, self.relu)

    def extra_repr(self) -> str:
        return (f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
                f"alpha_over_n={self.alpha_over_n}, groups={self.groups}, impl={self.impl}, "
                f"relu={self.relu}")


def set_impl(model: nn.Module, impl: str) -> None:
    """Switch every LRN layer of `model` to `impl` (the function is unchanged)."""
    _known(impl)
    for m in model.modules():
        if isinstance(m, LocalResponseNorm):
            m.impl = impl
