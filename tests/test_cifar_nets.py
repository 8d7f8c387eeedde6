"""The author's CIFAR-10 nets (repro.cifar.nets) as his cuda-convnet layer files define
them: sizes, pooling over the edge, cmrnorm, the tanh switch, per-layer rates and the
update rule, each against numbers or code written out here."""
import pytest
import torch
import torch.nn.functional as F

from repro.cifar.nets import NETS, CifarNet, param_groups
from repro.optim import PaperSGD


def test_nets_are_the_layer_files():
    """Parameter counts written out from the cfg files' numbers (conv: filters x channels x
    size^2 + filters; local: positions x that + a bias per position; fc: in x out + out)."""
    def count(net):
        return sum(p.numel() for p in net.parameters())
    sec80 = CifarNet(NETS["80sec"])
    assert count(sec80) == (32 * 3 * 25 + 32) + (32 * 32 * 25 + 32) + (64 * 32 * 25 + 64) \
        + (64 * 4 * 4 * 64 + 64) + (64 * 10 + 10)
    local = 6 * 6                                       # 24 -> 12 -> 6 after two 3/2 pools
    pct11 = CifarNet(NETS["11pct"])
    assert count(pct11) == (64 * 3 * 25 + 64) + (64 * 64 * 25 + 64) \
        + local * (64 * 64 * 9 + 64) + local * (32 * 64 * 9 + 32) + (32 * local * 10 + 10)
    pct13 = CifarNet(NETS["13pct"])
    assert count(pct13) == (64 * 3 * 25 + 64) + (64 * 64 * 25 + 64) \
        + local * (32 * 64 * 9 + 32) + local * (32 * 32 * 9 + 32) + (32 * local * 10 + 10)
    assert [n for n, _ in pct11.named_children()] == [
        "conv1", "conv1_relu", "pool1", "rnorm1", "conv2", "conv2_relu", "rnorm2", "pool2",
        "local3", "local3_relu", "local4", "local4_relu", "fc10"]
    without = [n for n, _ in CifarNet(NETS["11pct"], lrn=False).named_children()]
    assert "rnorm1" not in without and len(without) == 11
    assert pct11(torch.zeros(2, 3, 24, 24)).shape == sec80(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    w = CifarNet(NETS["11pct"], seed=0).local3.weight
    assert abs(w.std().item() - 0.04) < 0.001 and CifarNet(NETS["80sec"], seed=0).fc10.bias.abs().sum() == 0


def test_tanh_switch_changes_only_the_activation():
    relu, tanh = (CifarNet(NETS["80sec"], neuron, seed=3) for neuron in ("relu", "tanh"))
    a, b = relu.state_dict(), tanh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kinds = [(n.replace("relu", "X"), type(m).__name__.replace("ReLU", "X"))
             for n, m in relu.named_children()]
    assert kinds == [(n.replace("tanh", "X"), type(m).__name__.replace("Tanh", "X"))
                     for n, m in tanh.named_children()]
    assert sum(isinstance(m, torch.nn.Tanh) for m in tanh.children()) == 4

    def written_out(x, f):
        """layers-80sec.cfg: conv1 (no neuron), max pool 3/2 then the neuron, conv2 + neuron,
        avg pool, conv3 + neuron, avg pool, fc64 + neuron, fc10; pools over the edge."""
        p = dict(relu.named_parameters())
        x = f(F.max_pool2d(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=2), 3, 2, ceil_mode=True))
        x = F.avg_pool2d(f(F.conv2d(x, p["conv2.weight"], p["conv2.bias"], padding=2)), 3, 2,
                         ceil_mode=True)
        x = F.avg_pool2d(f(F.conv2d(x, p["conv3.weight"], p["conv3.bias"], padding=2)), 3, 2,
                         ceil_mode=True)
        x = f(F.linear(x.flatten(1), p["fc64.weight"], p["fc64.bias"]))
        return F.linear(x, p["fc10.weight"], p["fc10.bias"])
    x = torch.randn(3, 3, 32, 32) * 60
    torch.testing.assert_close(tanh(x), written_out(x, torch.tanh))
    torch.testing.assert_close(relu(x), written_out(x, F.relu))


def test_pooling_runs_over_the_edge_as_cuda_convnet_does():
    """outputsX = ceil((size - 3) / 2) + 1: 32 -> 16 -> 8 -> 4; a window that runs over the
    edge pools the pixels it has inside the map (kLocalPool: regionSize counts only those)."""
    net = CifarNet(NETS["80sec"])
    x = torch.arange(2 * 64.0).reshape(1, 2, 8, 8)
    avg, top = net.pool3(x), net.pool1(x)
    assert avg.shape[-1] == top.shape[-1] == 4
    assert avg[0, 1, 0, 0] == x[0, 1, 0:3, 0:3].mean()
    assert avg[0, 1, 3, 3] == x[0, 1, 6:8, 6:8].mean() and avg[0, 0, 1, 3] == x[0, 0, 2:5, 6:8].mean()
    assert top[0, 1, 3, 2] == x[0, 1, 6:8, 4:7].max()
    sizes, x = [], torch.zeros(1, 3, 32, 32)
    for name, module in net.named_children():
        if name == "fc64":
            break
        x = module(x)
        sizes.append(x.shape[-1])
    assert sizes == [32, 16, 16, 16, 16, 8, 8, 8, 4]


def test_rnorm_is_cuda_convnets_cmrnorm():
    """kFCNorm: the window starts at f - size/2 and holds size maps, clipped to the maps;
    denominator 1 + (scale / size) * sum of squares, raised to -pow (layer.py divides
    scale by size for cmrnorm)."""
    rnorm = CifarNet(NETS["11pct"]).rnorm1
    x = torch.randn(2, 64, 3, 3).abs() * 30
    size, scale, power = 9, 0.001, 0.75
    expected = torch.empty_like(x)
    for f in range(64):
        start = f - size // 2
        window = x[:, max(0, start):min(64, start + size)]
        expected[:, f] = x[:, f] * (1 + scale / size * (window ** 2).sum(1)) ** -power
    torch.testing.assert_close(rnorm(x), expected)


def test_param_groups_follow_the_params_files_and_update_as_cuda_convnet():
    net = CifarNet(NETS["11pct"], seed=0)
    groups = {g["name"]: g for g in param_groups(net)}
    assert (groups["conv1.weight"]["lr"], groups["conv1.weight"]["weight_decay"]) == (0.001, 0.0)
    assert (groups["local3.weight"]["weight_decay"], groups["fc10.weight"]["weight_decay"]) == (0.004, 0.01)
    assert (groups["fc10.bias"]["lr"], groups["fc10.bias"]["weight_decay"]) == (0.002, 0.0)
    assert len(groups) == 10 and all(g["momentum"] == 0.9 for g in groups.values())
    # a drop lowers epsW only (the 11pct params file): weights drop, biases keep epsB
    assert all(g["lr_drops"] == name.endswith(".weight") for name, g in groups.items())
    none = param_groups(net, lr_scale=3.0, regularise=False)
    assert all(g["weight_decay"] == 0 for g in none) and none[0]["lr"] == pytest.approx(0.003)
    # Weights.update(): inc = mom inc - eps grad - wc eps w; w += inc (eps inside the momentum)
    w0, grads = net.fc10.weight.detach().clone(), [torch.randn_like(net.fc10.weight) for _ in range(2)]
    opt = PaperSGD(param_groups(net), lr=1e-3)
    inc, w = torch.zeros_like(w0), w0.clone()
    for grad in grads:
        net.fc10.weight.grad = grad.clone()
        opt.step()
        inc = 0.9 * inc - 0.01 * 0.001 * w - 0.001 * grad
        w = w + inc
    torch.testing.assert_close(net.fc10.weight.detach(), w)


def test_each_result_is_tested_on_its_own_views():
    """convdata.py tested 9 crops when the 13pct files were added and 10 (corners, centre,
    mirrors) from the revision that added the 11pct files."""
    assert (NETS["11pct"].test_views, NETS["13pct"].test_views) == ("corners", "grid")
