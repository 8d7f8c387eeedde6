"""TowerAlexNet (the paper's two-GPU layout) equals the single-device grouped AlexNet:
forward, gradients, dropout masks, weights layout and optimizer state. Two CPU
"devices" stand in for the two GPUs; float64 keeps the comparison tight."""
import copy

import pytest
import torch
import torch.nn.functional as F

from repro.model import AlexNet
from repro.optim import PaperSGD, param_groups
from repro.towers import (TowerAlexNet, bench_towers, load_single_optimizer_state,
                          single_optimizer_state)

CPU2 = ("cpu", "cpu")
TIGHT = dict(rtol=1e-10, atol=1e-12)


_BUILT = {}


def small(seed=1):
    """67x67 input: conv1 15x15, pool5 1x1 (fc6 has 256 inputs); paper widths, LRN, groups."""
    if seed not in _BUILT:
        _BUILT[seed] = AlexNet(num_classes=7, input_size=67, seed=seed, bias_value=0.1).double()
    return copy.deepcopy(_BUILT[seed])


def inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 67, 67, generator=g, dtype=torch.float64) * 40,
            torch.randint(0, 7, (n,), generator=g))


def full_grads(tower):
    return {key: torch.cat([p.grad for p in tower.parts(key)]) for key in tower.state_dict()}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_and_backward_equal_single(mode):
    torch.set_num_threads(1)
    single = small()
    tower = TowerAlexNet(single, CPU2)
    single.train(mode == "train"), tower.train(mode == "train")
    x, y = inputs()

    torch.manual_seed(123)  # the same dropout masks in both
    out_single = single(x)
    torch.manual_seed(123)
    out_tower = tower(x)
    torch.testing.assert_close(out_tower, out_single, **TIGHT)
    if mode == "train":     # dropout was really on: another seed gives other outputs
        torch.manual_seed(124)
        assert not torch.allclose(tower(x), out_tower)

    F.cross_entropy(out_single, y).backward()
    F.cross_entropy(out_tower, y).backward()
    grads = full_grads(tower)
    for key, p in single.named_parameters():
        assert p.grad.abs().sum() > 0, key
        torch.testing.assert_close(grads[key], p.grad, **TIGHT, msg=key)


def test_state_dict_layout_and_round_trip():
    single = small()
    tower = TowerAlexNet(single, CPU2)
    sd_single, sd_tower = single.state_dict(), tower.state_dict()
    assert list(sd_tower) == list(sd_single)
    for key in sd_single:
        assert sd_tower[key].shape == sd_single[key].shape, key
        assert torch.equal(sd_tower[key], sd_single[key]), key

    other = small(seed=9)                 # towers <- single
    tower.load_state_dict(other.state_dict())
    x, _ = inputs()
    other.eval(), tower.eval()
    torch.testing.assert_close(tower(x), other(x), **TIGHT)
    fresh = small()                       # single <- towers
    fresh.load_state_dict(tower.state_dict())
    for key, value in other.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    back = tower.to_single(torch.device("cpu")).eval()
    torch.testing.assert_close(back(x), other(x), **TIGHT)


def test_load_state_dict_is_strict():
    tower = TowerAlexNet(small(), CPU2)
    sd = small().state_dict()
    with pytest.raises(RuntimeError, match="fc8.bias"):
        tower.load_state_dict({k: v for k, v in sd.items() if k != "fc8.bias"})
    with pytest.raises(RuntimeError, match="conv9.weight"):
        tower.load_state_dict(sd | {"conv9.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="size mismatch for fc8.weight"):
        tower.load_state_dict(sd | {"fc8.weight": torch.zeros(3, 4096)})


def test_each_tower_holds_half_of_every_layer():
    # "meta" as the second device: placement only (no forward).
    tower = TowerAlexNet(small(), ("cpu", "meta"))
    for key in small().state_dict():
        parts = tower.parts(key)
        if key.startswith("fc8"):
            assert len(parts) == 1 and parts[0].device.type == "cpu", key
        else:
            assert [p.device.type for p in parts] == ["cpu", "meta"], key
            assert parts[0].shape == parts[1].shape, key
    # grouped layers' tower halves read only their own tower's input channels
    assert tower.parts("conv2.weight")[0].shape == (128, 48, 5, 5)
    assert tower.parts("conv3.weight")[0].shape == (192, 256, 3, 3)   # reads both towers
    assert tower.parts("fc6.weight")[0].shape == (2048, 256)          # all of pool5


def test_optimizer_param_groups_map_to_the_single_layout():
    single = small()
    tower = TowerAlexNet(single, CPU2)
    for decay_biases in (True, False):
        opt_s = PaperSGD(param_groups(single, 5e-4, decay_biases), lr=0.01)
        opt_t = PaperSGD(param_groups(tower, 5e-4, decay_biases), lr=0.01)
        assert single_optimizer_state(opt_t, tower) == opt_s.state_dict()


def test_optimizer_state_moves_between_layouts():
    torch.set_num_threads(1)
    single = small()
    tower = TowerAlexNet(single, CPU2)
    single.eval(), tower.eval()
    # decay_biases=False: two parameter groups (weights, biases), the harder mapping
    opt_s = PaperSGD(param_groups(single, 5e-4, False), lr=0.01)
    opt_t = PaperSGD(param_groups(tower, 5e-4, False), lr=0.01)
    x, y = inputs(seed=1)
    for net, opt in ((single, opt_s), (tower, opt_t)):
        F.cross_entropy(net(x), y).backward()
        opt.step()
    converted = single_optimizer_state(opt_t, tower)
    reference = opt_s.state_dict()
    assert converted["param_groups"] == reference["param_groups"]
    assert converted["state"].keys() == reference["state"].keys() == set(range(16))
    for i, s in reference["state"].items():
        torch.testing.assert_close(converted["state"][i]["momentum_buffer"], s["momentum_buffer"], **TIGHT)

    # single -> towers: a fresh tower optimizer loaded from the single one steps the same
    tower2 = TowerAlexNet(single, CPU2).eval()
    opt_t2 = PaperSGD(param_groups(tower2, 5e-4, False), lr=0.01)
    load_single_optimizer_state(opt_t2, tower2, copy.deepcopy(reference))
    x, y = inputs(seed=2)
    for net, opt in ((single, opt_s), (tower2, opt_t2)):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    for key, value in single.state_dict().items():
        torch.testing.assert_close(tower2.state_dict()[key], value, **TIGHT, msg=key)


def test_needs_the_two_group_model():
    with pytest.raises(ValueError, match="groups=2"):
        TowerAlexNet(AlexNet(num_classes=7, input_size=67, groups=1), CPU2)


def test_bench_towers_runs():
    model = AlexNet(num_classes=5, input_size=67, seed=0)
    assert bench_towers(model, "cpu", "cpu", batch=2, steps=1, warmup=0, input_size=67) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_towers_on_one_gpu_equal_single():
    # float64: in fp32 conv2's weight gradient is only good to ~2.5e-3 of its max (both the
    # grouped and the per-tower conv, measured against fp64 on an H100), too loose to test.
    dev = torch.device("cuda:0")
    single = AlexNet(num_classes=1000, seed=0).to(dev, torch.float64)
    tower = TowerAlexNet(single, (dev, dev))
    x = torch.randn(8, 3, 227, 227, device=dev, dtype=torch.float64) * 50
    y = torch.randint(0, 1000, (8,), device=dev)
    for train in (True, False):
        single.train(train), tower.train(train)
        for p in [*single.parameters(), *tower.parameters()]:
            p.grad = None
        torch.manual_seed(7)       # the same CUDA dropout masks
        a = single(x)
        torch.manual_seed(7)
        b = tower(x)
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
        F.cross_entropy(a, y).backward()
        F.cross_entropy(b, y).backward()
        for key, p in single.named_parameters():
            g = torch.cat([q.grad for q in tower.parts(key)])
            torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12, msg=key)


def test_tanh_towers_equal_single():
    """Section 3.1's tanh variant runs on the towers with the single model's function."""
    torch.set_num_threads(1)
    single = AlexNet(num_classes=7, input_size=67, seed=2, bias_value=0.1,
                     activation="tanh").double().eval()
    tower = TowerAlexNet(single, CPU2).eval()
    x, _ = inputs()
    torch.testing.assert_close(tower(x), single(x), **TIGHT)
    with pytest.raises(ValueError, match="five conv layers"):
        TowerAlexNet(AlexNet(num_classes=7, input_size=67, extra_conv6=True), CPU2)
