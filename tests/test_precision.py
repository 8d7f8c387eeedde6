import pytest
import torch
import torch.nn.functional as F

from repro.precision import autocast_for


@pytest.fixture(autouse=True)
def restore_fp32_math():
    saved = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    yield
    torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved


@pytest.mark.parametrize("precision, math, dtype", [
    ("fp32", "ieee", torch.float32), ("tf32", "tf32", torch.float32), ("bf16", "tf32", torch.bfloat16)])
def test_each_precision_sets_the_fp32_math_and_the_forward_dtype(precision, math, dtype):
    # PyTorch's own default for cuDNN convolutions is TF32: fp32 must switch it off.
    torch.backends.cudnn.conv.fp32_precision = "tf32" if math == "ieee" else "ieee"
    with autocast_for(precision, torch.device("cpu")):
        y = F.linear(torch.randn(2, 3), torch.randn(4, 3))
    assert torch.backends.cudnn.conv.fp32_precision == math
    assert torch.backends.cuda.matmul.fp32_precision == math
    assert y.dtype == dtype


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-5), ("tf32", 2e-2)])
def test_fp32_convolutions_are_ieee_on_the_gpu(precision, tolerance):
    """conv1's shape against float64: TF32's 10-bit mantissa errs by ~1e-3 relative,
    IEEE fp32 by ~1e-7; fp32 must stay within 1e-5, while tf32 shows it is really on."""
    x = torch.randn(8, 3, 227, 227, device="cuda")
    w = torch.randn(96, 3, 11, 11, device="cuda") * 0.01
    exact = F.conv2d(x.double(), w.double(), stride=4)
    with autocast_for(precision, x.device):
        y = F.conv2d(x, w, stride=4)
    err = ((y.double() - exact).abs().max() / exact.abs().max()).item()
    assert err < tolerance
    if precision == "tf32":
        assert err > 1e-5          # TF32 really ran, so the fp32 case above means something
