import pytest
import torch
import torch.nn.functional as F

from repro.precision import autocast_for


@pytest.fixture(autouse=True)
def restore_fp32_math():
    saved = (torch.backends.cudnn.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
             torch.backends.cuda.matmul.fp32_precision)
    yield
    (torch.backends.cudnn.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
     torch.backends.cuda.matmul.fp32_precision) = saved


@pytest.mark.parametrize("precision, math, dtype", [
    ("fp32", "ieee", torch.float32), ("tf32", "tf32", torch.float32), ("bf16", "tf32", torch.bfloat16)])
def test_each_precision_sets_the_fp32_math_and_the_forward_dtype(precision, math, dtype):
    # PyTorch's own default for cuDNN convolutions is TF32: fp32 must switch it off.
    torch.backends.cudnn.conv.fp32_precision = "tf32" if math == "ieee" else "ieee"
    with autocast_for(precision, torch.device("cpu")):
        y = F.linear(torch.randn(2, 3), torch.randn(4, 3))
    assert torch.backends.cudnn.conv.fp32_precision == torch.backends.cudnn.fp32_precision == math
    assert torch.backends.cuda.matmul.fp32_precision == math
    assert y.dtype == dtype


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-5), ("tf32", 2e-2)])
def test_fp32_convolutions_and_matmuls_are_ieee_on_the_gpu(precision, tolerance):
    """conv1's and fc6's shapes against float64, forward and weight gradient: TF32's 10-bit
    mantissa errs by ~1e-3 relative, IEEE fp32 by ~1e-7; fp32 must stay within 1e-5,
    while tf32 shows that it is really on."""
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(8, 3, 227, 227, device="cuda", generator=g)
    h = torch.randn(8, 9216, device="cuda", generator=g)
    w = (torch.randn(96, 3, 11, 11, device="cuda", generator=g) * 0.01).requires_grad_()
    v = (torch.randn(4096, 9216, device="cuda", generator=g) * 0.01).requires_grad_()
    with autocast_for(precision, x.device):
        y, z = F.conv2d(x, w, stride=4), F.linear(h, v)
    (y.square().sum() + z.square().sum()).backward()
    w64, v64 = (t.detach().double().requires_grad_() for t in (w, v))
    y64, z64 = F.conv2d(x.double(), w64, stride=4), F.linear(h.double(), v64)
    (y64.square().sum() + z64.square().sum()).backward()

    def err(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()
    errors = [err(y, y64), err(z, z64), err(w.grad, w64.grad), err(v.grad, v64.grad)]
    assert max(errors) < tolerance, errors
    if precision == "tf32":
        assert min(errors) > 1e-5, errors   # TF32 really ran, so the fp32 case means something
