"""repro.cifar.local.LocallyConnected2d, cuda-convnet's type=local layer: against a loop over
positions, and against a convolution when every position holds the same filters."""
import pytest
import torch
import torch.nn.functional as F

from repro.cifar.local import LocallyConnected2d


@pytest.mark.parametrize("padding, stride", [(1, 1), (0, 2), (2, 1)])
def test_locally_connected_layer_equals_a_loop_over_positions(padding, stride):
    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 4, in_size=7, kernel_size=3, padding=padding, stride=stride)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 3, 7, 7)
    padded = F.pad(x, (padding,) * 4)
    side = layer.out_size
    assert side == (7 + 2 * padding - 3) // stride + 1
    expected = torch.empty(2, 4, side, side)
    for y in range(side):
        for x0 in range(side):
            patch = padded[:, :, y * stride:y * stride + 3, x0 * stride:x0 * stride + 3]
            filters = layer.weight[y * side + x0].reshape(4, 3, 3, 3)     # this position's own
            for o in range(4):
                expected[:, o, y, x0] = (patch * filters[o]).sum((1, 2, 3)) + layer.bias[o, y, x0]
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_locally_connected_layer_with_one_filter_everywhere_is_a_convolution():
    torch.manual_seed(1)
    layer = LocallyConnected2d(5, 6, in_size=6, kernel_size=3, padding=1)
    conv = torch.nn.Conv2d(5, 6, 3, padding=1)
    with torch.no_grad():
        layer.weight.copy_(conv.weight.reshape(6, -1).expand(36, 6, 45))
        layer.bias.copy_(conv.bias[:, None, None].expand(6, 6, 6))
    x = torch.randn(3, 5, 6, 6, requires_grad=True)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    layer(x).sum().backward()
    assert layer.weight.grad.shape == layer.weight.shape and x.grad is not None
    with pytest.raises(ValueError, match=r"expects \(N, 5, 6, 6\) inputs"):
        layer(torch.zeros(1, 5, 7, 7))
