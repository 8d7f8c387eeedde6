"""Local response normalisation across channels (paper section 3.3).

    b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2) ** beta,   j clipped to [0, C-1]

alpha_over_n=False is the paper's formula as printed; alpha_over_n=True divides
alpha by n, as the author's cuda-convnet code, Caffe and torch.nn.LocalResponseNorm do.
With groups=2 each tower normalises over its own maps only: in the paper's
two-GPU net the window never crosses from one GPU's maps to the other's
(cuda-convnet2's layers-imagenet-2gpu-model.cfg has rnorm1a/rnorm1b, 48 maps each).
"""

import torch
import torch.nn.functional as F
from torch import nn


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                        alpha_over_n: bool, groups: int = 1) -> torch.Tensor:
    """Normalise an (N, C, H, W) tensor over windows of `size` adjacent channels
    of the same group."""
    if x.dim() != 4:
        raise ValueError(f"local_response_norm expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if groups > 1:
        return torch.cat([local_response_norm(part, size, alpha, beta, k, alpha_over_n)
                          for part in x.chunk(groups, dim=1)], dim=1)
    channels = x.shape[1]
    # Sum of a_j^2 over the window [i - size//2, i + (size-1)//2] (torch's window; the
    # formula's for odd size): zero-pad the channel axis, add `size` shifted slices.
    # Plain adds keep any memory format (NCHW or channels_last) and any dtype.
    sq = F.pad(x * x, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    window_sum = sq.narrow(1, 0, channels)
    for j in range(1, size):
        window_sum = window_sum + sq.narrow(1, j, channels)
    coeff = alpha / size if alpha_over_n else alpha
    return x / (window_sum * coeff + k).pow(beta)


class LocalResponseNorm(nn.Module):
    def __init__(self, size: int, alpha: float, beta: float, k: float, alpha_over_n: bool,
                 groups: int = 1):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.alpha_over_n, self.groups = alpha_over_n, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k,
                                   self.alpha_over_n, self.groups)

    def extra_repr(self) -> str:
        return (f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
                f"alpha_over_n={self.alpha_over_n}, groups={self.groups}")
