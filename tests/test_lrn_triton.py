"""The Triton LRN kernels, run on the CPU by Triton's interpreter (TRITON_INTERPRET=1,
which must be set before triton is imported: hence a subprocess). On a GPU,
tests/test_lrn.py::test_triton_equals_reference runs the compiled kernels."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = r'''
import torch
from repro import lrn_triton
from repro.lrn import local_response_norm

g = torch.Generator().manual_seed(0)
for channels, groups, size, relu in ((12, 2, 5, False), (10, 1, 5, False), (12, 2, 3, False),
                                     (6, 2, 1, False), (12, 2, 5, True), (10, 1, 3, True)):
    x = torch.randn(2, channels, 3, 4, generator=g) * 60
    x[:, :, 0, 0] = 0.0                              # the ReLU's kink: its gradient is 0 there
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    args = (size, 1e-4, 0.75, 2.0, groups, relu)
    out = lrn_triton.lrn(x, *args)                   # the custom op, with its autograd
    upstream = torch.randn(out.shape, generator=g)
    (grad,) = torch.autograd.grad(out, x, upstream)
    ref_in = x.detach().double().requires_grad_()
    ref = local_response_norm(ref_in, size, 1e-4, 0.75, 2.0, False, groups, relu)
    (ref_grad,) = torch.autograd.grad(ref, ref_in, upstream.double())
    for got, want in ((out, ref), (grad, ref_grad)):
        err = ((got.double() - want).norm() / want.norm()).item()
        assert err < 1e-5, (channels, groups, size, relu, err)
    assert out.is_contiguous(memory_format=torch.channels_last)
nan = torch.zeros(1, 6, 2, 2).contiguous(memory_format=torch.channels_last)
nan[0, 2, 1, 1] = float("nan")                       # the fused ReLU keeps a NaN, as F.relu does
assert lrn_triton.lrn(nan, 5, 1e-4, 0.75, 2.0, 1, True).isnan().any()
print("ok")
'''


def test_triton_kernels_equal_the_formula_under_the_interpreter():
    root = Path(__file__).parent.parent
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
