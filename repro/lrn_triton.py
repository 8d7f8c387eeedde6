"""LRN as Triton kernels over channels_last tensors, seen as a (pixels, channels) matrix.

Each program takes a block of pixels and all channels of each. The forward
reads x once per window tap (cache hits after the first) and writes b; with RELU
it rectifies x as it loads it (the input is then the conv's output z, a = relu(z)),
so no rectified copy is written or read. The backward recomputes s from x rather
than saving it, in two passes (and, with RELU, zeroes dL/dz where z <= 0):
  t = g * a * s^(-beta-1)                                 (pass 1, fp32 scratch)
  dL/da = g * s^-beta - 2 c beta a * window_sum(t)        (pass 2)
Registered as torch.library custom ops so torch.compile treats them as opaque
calls with a known autograd formula.
"""
import contextlib

import torch
import triton
import triton.language as tl


def applies(x: torch.Tensor, size: int, groups: int) -> bool:
    return (x.is_cuda and x.dim() == 4 and size % 2 == 1 and x.shape[1] % groups == 0
            and x.is_contiguous(memory_format=torch.channels_last)
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and x.numel() < 2**31)  # the kernels' offsets are 32-bit


@triton.jit
def _s(X, rows, cols, row_ok, C: tl.constexpr, GROUP: tl.constexpr, SIZE: tl.constexpr,
       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, RELU: tl.constexpr, coeff, k):
    """k + coeff * sum of a^2 over each channel's window inside its group."""
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for d in tl.static_range(SIZE):
        c2 = cols + (d - SIZE // 2)
        ok = (c2 >= 0) & (c2 < C) & (c2 // GROUP == cols // GROUP)
        v = tl.load(X + rows[:, None] * C + c2[None, :], mask=row_ok[:, None] & ok[None, :],
                    other=0.0).to(tl.float32)
        if RELU:  # NaN kept, as F.relu keeps it (so a non-finite loss still shows)
            v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)
        acc += v * v
    return k + coeff * acc


@triton.jit
def _tile(X, P, C: tl.constexpr, GROUP: tl.constexpr, SIZE: tl.constexpr,
          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, RELU: tl.constexpr, coeff, k):
    """This program's block of pixels (all channels): its rows, their mask, the offsets
    and mask of the tile, s over it, and a (fp32: x, rectified if RELU)."""
    rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < P
    mask = row_ok[:, None] & (cols < C)[None, :]
    s = _s(X, rows, cols, row_ok, C, GROUP, SIZE, BLOCK_P, BLOCK_C, RELU, coeff, k)
    offs = rows[:, None] * C + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        x = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return rows, row_ok, offs, mask, s, x


@triton.jit
def _forward(X, Y, P, C: tl.constexpr, GROUP: tl.constexpr, SIZE: tl.constexpr,
             BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, RELU: tl.constexpr, coeff, k, beta):
    rows, row_ok, offs, mask, s, x = _tile(X, P, C, GROUP, SIZE, BLOCK_P, BLOCK_C, RELU, coeff, k)
    y = x * tl.exp2(-beta * tl.log2(s))
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _backward_t(X, G, T, P, C: tl.constexpr, GROUP: tl.constexpr, SIZE: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, RELU: tl.constexpr, coeff, k, beta):
    rows, row_ok, offs, mask, s, x = _tile(X, P, C, GROUP, SIZE, BLOCK_P, BLOCK_C, RELU, coeff, k)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    t = g * x * tl.exp2((-beta - 1.0) * tl.log2(s))
    tl.store(T + offs, t, mask=mask)


@triton.jit
def _backward_x(X, G, T, DX, P, C: tl.constexpr, GROUP: tl.constexpr, SIZE: tl.constexpr,
                BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, RELU: tl.constexpr, coeff, k, beta):
    rows, row_ok, offs, mask, s, x = _tile(X, P, C, GROUP, SIZE, BLOCK_P, BLOCK_C, RELU, coeff, k)
    cols = tl.arange(0, BLOCK_C)
    back = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for d in tl.static_range(SIZE):           # odd size: the window is its own transpose
        c2 = cols + (d - SIZE // 2)
        ok = (c2 >= 0) & (c2 < C) & (c2 // GROUP == cols // GROUP)
        back += tl.load(T + rows[:, None] * C + c2[None, :], mask=row_ok[:, None] & ok[None, :],
                        other=0.0)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    dx = g * tl.exp2(-beta * tl.log2(s)) - (2.0 * coeff * beta) * x * back
    if RELU:
        dx = tl.where(x > 0.0, dx, 0.0)   # x is a = relu(z): a > 0 exactly where z > 0
    tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


def _launch(kernel, x, *tensors, size, coeff, beta, k, groups, relu):
    n, c, h, w = x.shape
    pixels = n * h * w
    block_c = triton.next_power_of_2(c)
    block_p = max(1, 4096 // block_c)
    grid = (triton.cdiv(pixels, block_p),)
    # Triton launches on the current device, which may not be x's (towers: cuda:1).
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel[grid](x, *tensors, pixels, c, c // groups, size, block_p, block_c, relu, coeff, k,
                     beta, num_warps=4)


@torch.library.custom_op("repro::lrn", mutates_args=())
def lrn(x: torch.Tensor, size: int, coeff: float, beta: float, k: float, groups: int,
        relu: bool) -> torch.Tensor:
    x = x.contiguous(memory_format=torch.channels_last)  # what the kernels index; usually a no-op
    y = torch.empty_like(x, memory_format=torch.channels_last)
    _launch(_forward, x, y, size=size, coeff=coeff, beta=beta, k=k, groups=groups, relu=relu)
    return y


@lrn.register_fake
def _(x, size, coeff, beta, k, groups, relu):
    return torch.empty_like(x, memory_format=torch.channels_last)


@torch.library.custom_op("repro::lrn_backward", mutates_args=())
def lrn_backward(g: torch.Tensor, x: torch.Tensor, size: int, coeff: float, beta: float, k: float,
                 groups: int, relu: bool) -> torch.Tensor:
    g = g.contiguous(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    t = torch.empty(x.shape, dtype=torch.float32, device=x.device,
                    memory_format=torch.channels_last)
    _launch(_backward_t, x, g, t, size=size, coeff=coeff, beta=beta, k=k, groups=groups, relu=relu)
    dx = torch.empty_like(x, memory_format=torch.channels_last)
    _launch(_backward_x, x, g, t, dx, size=size, coeff=coeff, beta=beta, k=k, groups=groups,
            relu=relu)
    return dx


@lrn_backward.register_fake
def _(g, x, size, coeff, beta, k, groups, relu):
    return torch.empty_like(x, memory_format=torch.channels_last)


def _setup(ctx, inputs, output):
    x, size, coeff, beta, k, groups, relu = inputs
    ctx.save_for_backward(x)
    ctx.args = size, coeff, beta, k, groups, relu


def _grad(ctx, g):
    (x,) = ctx.saved_tensors
    return lrn_backward(g, x, *ctx.args), None, None, None, None, None, None


lrn.register_autograd(_grad, setup_context=_setup)
