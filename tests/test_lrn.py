import pytest
import torch
import torch.nn.functional as F

from repro.lrn import LocalResponseNorm, fast_local_response_norm, local_response_norm

# (k, alpha_over_n) of each convention; n=5, alpha=1e-4, beta=0.75 throughout.
CONVENTIONS = {"paper": (2.0, False), "cuda-convnet": (2.0, True), "caffe": (1.0, True)}


def lrn_by_loops(a, n, alpha, beta, k, alpha_over_n):
    """Section 3.3's formula written out channel by channel."""
    channels = a.shape[1]
    coeff = alpha / n if alpha_over_n else alpha
    b = torch.empty_like(a)
    for i in range(channels):
        total = torch.zeros_like(a[:, 0])
        for j in range(max(0, i - n // 2), min(channels - 1, i + n // 2) + 1):
            total += a[:, j] ** 2
        b[:, i] = a[:, i] / (k + coeff * total) ** beta
    return b


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_matches_formula_including_channel_edges(convention):
    k, alpha_over_n = CONVENTIONS[convention]
    g = torch.Generator().manual_seed(0)
    # Large activations so alpha * sum is not negligible next to k; 7 channels: every
    # channel within n/2 of an edge is exercised, and channel 3 has a full window.
    a = torch.randn(2, 7, 3, 4, generator=g, dtype=torch.float64) * 60
    expected = lrn_by_loops(a, 5, 1e-4, 0.75, k, alpha_over_n)
    got = LocalResponseNorm(5, 1e-4, 0.75, k, alpha_over_n)(a)
    assert (expected / a - 1).abs().max() > 0.05  # the normalisation is doing something
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_paper_and_cuda_convnet_differ_by_alpha_over_n():
    a = torch.randn(1, 8, 2, 2, dtype=torch.float64) * 60
    paper = local_response_norm(a, 5, 1e-4, 0.75, 2.0, alpha_over_n=False)
    assert not torch.allclose(paper, local_response_norm(a, 5, 1e-4, 0.75, 2.0, alpha_over_n=True))
    torch.testing.assert_close(paper, local_response_norm(a, 5, 5e-4, 0.75, 2.0, alpha_over_n=True))


def test_cuda_convnet_equals_torch_lrn():
    a = torch.randn(2, 16, 5, 5, dtype=torch.float64) * 60
    ours = local_response_norm(a, 5, 1e-4, 0.75, 2.0, alpha_over_n=True)
    torch.testing.assert_close(ours, torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(a))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_gives_same_result_and_layout(dtype):
    a = (torch.randn(2, 12, 6, 5, generator=torch.Generator().manual_seed(0)) * 60).to(dtype)
    ref = local_response_norm(a, 5, 1e-4, 0.75, 2.0, alpha_over_n=False)
    got = local_response_norm(a.contiguous(memory_format=torch.channels_last), 5, 1e-4, 0.75, 2.0, False)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, ref)  # equal up to an ulp (vectorised vs scalar pow)


def test_bfloat16_close_to_float64():
    a = torch.randn(2, 12, 6, 5, dtype=torch.float64) * 60
    ref = local_response_norm(a, 5, 1e-4, 0.75, 2.0, alpha_over_n=False)
    got = local_response_norm(a.bfloat16(), 5, 1e-4, 0.75, 2.0, alpha_over_n=False)
    torch.testing.assert_close(got.double(), ref, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("alpha_over_n", [False, True])
def test_gradcheck(alpha_over_n):
    a = (torch.randn(1, 6, 2, 2, dtype=torch.float64) * 30).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: local_response_norm(x, 5, 1e-3, 0.75, 2.0, alpha_over_n), (a,))


def test_groups_normalise_each_group_alone():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 10, 3, 3, generator=g, dtype=torch.float64) * 60
    expected = torch.cat([lrn_by_loops(a[:, :5], 5, 1e-4, 0.75, 2.0, False),
                          lrn_by_loops(a[:, 5:], 5, 1e-4, 0.75, 2.0, False)], dim=1)
    got = local_response_norm(a, 5, 1e-4, 0.75, 2.0, False, groups=2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    assert not torch.allclose(got, local_response_norm(a, 5, 1e-4, 0.75, 2.0, False))


@pytest.mark.parametrize("size, groups, relu", [(5, 1, False), (5, 2, False), (4, 1, False),
                                               (3, 2, False), (5, 2, True), (4, 1, True)])
def test_fused_backward_equals_autograd_of_the_formula(size, groups, relu):
    g = torch.Generator().manual_seed(2)
    a = (torch.randn(2, 12, 3, 3, generator=g, dtype=torch.float64) * 60).requires_grad_()
    args = (size, 1e-4, 0.75, 2.0, False, groups)
    ref = local_response_norm(F.relu(a) if relu else a, *args)   # relu written out here
    out = fast_local_response_norm(a, *args, impl="fused", relu=relu)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)
    upstream = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (grad_ref,) = torch.autograd.grad(ref, a, upstream)
    (grad_fused,) = torch.autograd.grad(out, a, upstream)
    torch.testing.assert_close(grad_fused, grad_ref, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda t: fast_local_response_norm(t, *args, impl="fused", relu=relu),
        (a[:1, :, :2, :2].detach().clone().requires_grad_(),))
    if relu:
        assert (grad_fused[a.detach() < 0] == 0).all() and (grad_fused[a.detach() > 0] != 0).any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("channels, groups, relu", [(96, 2, False), (256, 2, False), (96, 1, False),
                                                    (96, 2, True), (256, 2, True)])
def test_triton_equals_reference(dtype, tol, channels, groups, relu):
    g = torch.Generator(device="cuda").manual_seed(3)
    x = (torch.randn(8, channels, 13, 13, generator=g, device="cuda") * 60).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    args = (5, 1e-4, 0.75, 2.0, False, groups)
    ref_in = x.detach().double().requires_grad_()
    ref = local_response_norm(F.relu(ref_in) if relu else ref_in, *args)
    out = fast_local_response_norm(x, *args, impl="triton", relu=relu)
    upstream = torch.randn(ref.shape, generator=g, device="cuda", dtype=torch.float64)
    (grad_ref,) = torch.autograd.grad(ref, ref_in, upstream)
    (grad,) = torch.autograd.grad(out, x, upstream.to(dtype))
    for got, want in ((out, ref), (grad, grad_ref)):
        err = (got.double() - want).norm() / want.norm()
        assert err < tol, err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_declines_tensors_past_32_bit_offsets():
    from repro import lrn_triton

    big = torch.empty(7300, 96, 55, 55, dtype=torch.bfloat16, device="cuda",
                      memory_format=torch.channels_last)   # 10-crop eval at val batch 730
    assert big.numel() >= 2**31 and not lrn_triton.applies(big, 5, 2)
    assert lrn_triton.applies(big[:128], 5, 2)
