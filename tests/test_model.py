import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repro.lrn import LocalResponseNorm
from repro.model import AlexNet, build_model

# A small input (67 -> 15 -> 7 -> 7 -> 3 -> 3 -> 1) keeps the fc6 matrix tiny where
# a test is not about the full-size net.
SMALL = dict(num_classes=10, input_size=67)
D2L = dict(num_classes=10, in_channels=1, input_size=224, conv1_padding=1, lrn="none", groups=1, init="torch")


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def conv_params(c_in, c_out, kernel, groups=1):
    return c_out * (c_in // groups) * kernel * kernel + c_out


def fc_params(n_in, n_out):
    return n_in * n_out + n_out


@pytest.fixture(scope="module")
def paper():
    return AlexNet(num_classes=1000)


def test_paper_parameter_count(paper):
    assert n_params(paper) == 60_965_224


def test_one_tower_parameter_count():
    assert n_params(AlexNet(groups=1)) == 62_378_344


def test_half_kernels_parameter_count():
    # Section 3.2's one-GPU net: half the kernels in conv1..conv4; conv5 and the fc layers kept.
    expected = (conv_params(3, 48, 11) + conv_params(48, 128, 5) + conv_params(128, 192, 3)
                + conv_params(192, 192, 3) + conv_params(192, 256, 3)
                + fc_params(256 * 6 * 6, 4096) + fc_params(4096, 4096) + fc_params(4096, 1000))
    assert n_params(AlexNet(groups=1, half_kernels=True)) == expected


def test_half_kernels_needs_one_tower():
    with pytest.raises(ValueError, match="groups"):
        AlexNet(half_kernels=True)


def test_state_dict_layout(paper):
    layers = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert list(paper.state_dict()) == [f"{l}.{p}" for l in layers for p in ("weight", "bias")]


def test_paper_feature_maps(paper):
    # Figure 2, as (C, H, W).
    expected = {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27),
                "pool2": (256, 13, 13), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
                "conv5": (256, 13, 13), "pool5": (256, 6, 6), "fc6": (4096,), "fc7": (4096,),
                "fc8": (1000,)}
    seen = {}
    handles = [getattr(paper, name).register_forward_hook(
        lambda m, i, out, name=name: seen.__setitem__(name, tuple(out.shape[1:]))) for name in expected]
    with torch.no_grad():
        paper.eval()(torch.zeros(1, 3, 227, 227))
    for h in handles:
        h.remove()
    assert seen == expected
    assert paper.fc6.in_features == 256 * 6 * 6


def paper_forward(m: AlexNet, x: torch.Tensor) -> torch.Tensor:
    """Sections 3.1-3.5 and Figure 2 written out with the layers' weights: ReLU after every
    conv and hidden fc; LRN (k=2, n=5, alpha=1e-4, beta=0.75) after conv1's and conv2's
    ReLU, per tower; 3x3 max pooling at stride 2 after LRN1, LRN2 and conv5; conv2, conv4
    and conv5 read their own tower only."""
    def conv(name, x, stride=1, padding=None, groups=1):
        layer = getattr(m, name)
        k = layer.weight.shape[-1]
        return F.relu(F.conv2d(x, layer.weight, layer.bias, stride,
                               k // 2 if padding is None else padding, groups=groups))

    def lrn(x):   # torch divides alpha by n: pass n * alpha for the paper's plain sum
        return torch.cat([F.local_response_norm(t, 5, 5 * 1e-4, 0.75, 2.0) for t in x.chunk(2, 1)], 1)

    def pool(x):
        return F.max_pool2d(x, 3, 2)
    x = pool(lrn(conv("conv1", x, stride=4, padding=0)))
    x = pool(lrn(conv("conv2", x, groups=2)))
    x = conv("conv4", conv("conv3", x), groups=2)
    x = pool(conv("conv5", x, groups=2)).flatten(1)
    x = F.relu(F.linear(x, m.fc6.weight, m.fc6.bias))
    x = F.relu(F.linear(x, m.fc7.weight, m.fc7.bias))
    return F.linear(x, m.fc8.weight, m.fc8.bias)


def test_forward_is_the_papers_layer_sequence():
    model = AlexNet(num_classes=10, seed=0).eval()
    with torch.no_grad():
        for layer in (model.fc6, model.fc7):    # spread the logits, so a change shows
            layer.weight.mul_(10)
        x = torch.randn(2, 3, 227, 227) * 50
        expect = paper_forward(model, x)
        assert expect.std() > 1e-3
        torch.testing.assert_close(model(x), expect, rtol=1e-5, atol=1e-4)


def test_d2l_fashion_mnist_variant():
    model = AlexNet(**D2L)
    assert model.fc6.in_features == 6400  # 224 +2 pad -> 54 -> 26 -> 26 -> 12 -> 12 -> 5; 256*5*5
    assert not any(isinstance(m, LocalResponseNorm) for m in model.modules())
    with torch.no_grad():
        assert model(torch.zeros(3, 1, 224, 224)).shape == (3, 10)


def test_torch_init_keeps_pytorch_default():
    conv1 = AlexNet(**SMALL, init="torch").conv1
    bound = 1 / (3 * 11 * 11) ** 0.5  # kaiming_uniform(a=sqrt(5)) is U(-1/sqrt(fan_in), +)
    assert conv1.weight.abs().max() <= bound
    assert abs(conv1.weight.std().item() - bound / 3 ** 0.5) < 0.05 * bound


def test_non_overlapping_pool_ablation():
    model = AlexNet(**SMALL | {"input_size": 227}, pool_kernel=2, pool_stride=2)
    # 55 -> (55-2)//2+1 = 27 -> 27 -> 13 -> 13 -> 6
    assert model.fc6.in_features == 256 * 6 * 6
    assert model.pool1.kernel_size == 2 and model.pool1.stride == 2


def test_init_statistics(paper):
    bias = {"conv1": 0.0, "conv2": 1.0, "conv3": 0.0, "conv4": 1.0, "conv5": 1.0,
            "fc6": 1.0, "fc7": 1.0, "fc8": 0.0}
    for name, value in bias.items():
        layer = getattr(paper, name)
        w = layer.weight.detach()
        assert abs(w.std().item() - 0.01) < 0.02 * 0.01, name
        assert abs(w.mean().item()) < 5 * 0.01 / w.numel() ** 0.5, name
        assert torch.equal(layer.bias, torch.full_like(layer.bias, value)), name


def test_init_options():
    model = AlexNet(**SMALL, weight_std=0.05, bias_one=["conv1"], bias_value=0.1)
    assert abs(model.fc7.weight.std().item() - 0.05) < 0.001
    assert torch.equal(model.conv1.bias, torch.full((96,), 0.1))
    assert torch.equal(model.conv2.bias, torch.zeros(256))
    with pytest.raises(ValueError, match="bias_one"):
        AlexNet(**SMALL, bias_one=["conv6"])


@pytest.mark.parametrize("init", ["paper", "torch"])
def test_seed_is_reproducible_and_leaves_global_rng_alone(init):
    state = torch.get_rng_state()
    a, b = AlexNet(**SMALL, init=init, seed=3), AlexNet(**SMALL, init=init, seed=3)
    c = AlexNet(**SMALL, init=init, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert not torch.equal(a.fc8.weight, c.fc8.weight)


def _changed_outputs(conv, in_channels, perturbed):
    x = torch.randn(1, in_channels, 7, 7)
    y = x.clone()
    y[:, perturbed] += torch.randn_like(y[:, perturbed])
    with torch.no_grad():
        diff = (conv(y) - conv(x)).abs().amax(dim=(0, 2, 3))
    return diff > 0


@pytest.mark.parametrize("name, c_in, c_out", [("conv2", 96, 256), ("conv4", 384, 384), ("conv5", 384, 256)])
def test_grouped_layers_keep_towers_apart(paper, name, c_in, c_out):
    changed = _changed_outputs(getattr(paper, name), c_in, slice(0, c_in // 2))
    assert changed[: c_out // 2].all()       # tower A's outputs see tower A's maps
    assert not changed[c_out // 2:].any()    # tower B's do not


@pytest.mark.parametrize("norm, maps", [("norm1", 96), ("norm2", 256)])
def test_lrn_window_stays_inside_each_tower(paper, norm, maps):
    # cuda-convnet2's two-GPU net has one rnorm layer per GPU (rnorm1a/rnorm1b, 48 maps
    # each): perturbing tower A's maps must leave every tower-B output unchanged.
    changed = _changed_outputs(getattr(paper, norm), maps, slice(0, maps // 2))
    assert changed[: maps // 2].all() and not changed[maps // 2:].any()
    one_tower = AlexNet(**SMALL, groups=1)
    assert _changed_outputs(getattr(one_tower, norm), maps, slice(0, maps // 2))[maps // 2]


def test_conv3_reads_both_towers(paper):
    assert _changed_outputs(paper.conv3, 256, slice(0, 128)).all()


def test_lrn_conventions():
    paper_lrn = AlexNet(**SMALL).norm1
    assert (paper_lrn.k, paper_lrn.alpha, paper_lrn.alpha_over_n) == (2.0, 1e-4, False)
    convnet = AlexNet(**SMALL, lrn="cuda-convnet").norm2
    x = torch.randn(1, 256, 3, 3) * 100
    torch_lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    # ReLU, then two towers: torch's LRN applied to each half of the maps separately.
    a = torch.relu(x)
    torch.testing.assert_close(convnet(x), torch.cat([torch_lrn(a[:, :128]), torch_lrn(a[:, 128:])], 1))
    caffe = AlexNet(**SMALL, lrn="caffe", lrn_k=1.0).norm1
    assert (caffe.k, caffe.alpha_over_n) == (1.0, True)
    with pytest.raises(ValueError, match="lrn"):
        AlexNet(**SMALL, lrn="batchnorm")


def test_dropout_only_in_training():
    model = AlexNet(**SMALL, seed=0)
    assert model.drop6.p == model.drop7.p == 0.5
    x = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("kwargs, argument", [
    (dict(input_size=40), "input_size"),
    (dict(input_size=67, pool_kernel=9), "pool_kernel"),
    (dict(groups=5), "groups"),
    (dict(groups=0), "groups"),
    (dict(conv1_padding=-1), "conv1_padding"),
    (dict(dropout=1.0), "dropout"),
    (dict(init="kaiming"), "init"),
])
def test_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        AlexNet(**kwargs)


def test_build_model_from_dict():
    model = build_model(D2L | {"seed": 1})
    assert model.conv1.in_channels == 1 and model.fc8.out_features == 10
    with pytest.raises(ValueError, match="lrn_n"):
        build_model(D2L | {"lrn_n": 5})


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("split, pad", [(True, 0), (False, 4), (True, 8)])
def test_conv_switches_compute_the_same_function(split, pad, channels_last):
    from types import SimpleNamespace

    from repro.model import set_impls

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 3, 67, 67, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=fmt)
    plain = AlexNet(**SMALL, seed=0, bias_value=0.1).to(memory_format=fmt)
    switched = AlexNet(**SMALL, seed=0, bias_value=0.1).to(memory_format=fmt)
    set_impls(switched, SimpleNamespace(lrn_impl="reference", split_groups=split, pad_input_channels=pad))
    assert switched.conv1.pad_to == pad and switched.conv2.split_groups == split
    outs = []
    for model in (plain, switched):
        out = model.eval()(x * 50)
        out.square().sum().backward()
        outs.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (out, grads), (out_s, grads_s) = outs
    torch.testing.assert_close(out_s, out, rtol=1e-5, atol=1e-6)
    assert grads_s.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_s[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert list(switched.state_dict()) == list(plain.state_dict())


def test_pad_input_channels_below_the_input_is_refused():
    from types import SimpleNamespace

    from repro.model import set_impls

    with pytest.raises(ValueError, match="pad_input_channels=2 is fewer than conv1's 3"):
        set_impls(AlexNet(**SMALL), SimpleNamespace(lrn_impl="auto", split_groups=False,
                                                    pad_input_channels=2))


def written_out(m: AlexNet, x, act, middle) -> torch.Tensor:
    """A variant's forward written out: conv1/conv2 as in the paper with `act` before
    each LRN, then `middle` as (layer, groups, pooled after) with `act` after each."""
    def lrn(x):
        return torch.cat([F.local_response_norm(t, 5, 5 * 1e-4, 0.75, 2.0) for t in x.chunk(2, 1)], 1)
    x = F.max_pool2d(lrn(act(F.conv2d(x, m.conv1.weight, m.conv1.bias, 4))), 3, 2)
    x = F.max_pool2d(lrn(act(F.conv2d(x, m.conv2.weight, m.conv2.bias, 1, 2, groups=2))), 3, 2)
    for name, groups, pooled in middle:
        layer = getattr(m, name)
        x = act(F.conv2d(x, layer.weight, layer.bias, 1, 1, groups=groups))
        x = F.max_pool2d(x, 3, 2) if pooled else x
    x = act(F.linear(x.flatten(1), m.fc6.weight, m.fc6.bias))
    x = act(F.linear(x, m.fc7.weight, m.fc7.bias))
    return F.linear(x, m.fc8.weight, m.fc8.bias)


PAPER_MIDDLE = [("conv3", 1, False), ("conv4", 2, False), ("conv5", 2, True)]


@pytest.mark.parametrize("kwargs, act, middle", [
    (dict(activation="tanh"), torch.tanh, PAPER_MIDDLE),                       # section 3.1
    (dict(removed_convs=["conv3"]), F.relu, PAPER_MIDDLE[1:]),                 # section 7
    (dict(removed_convs=["conv4"]), F.relu, [PAPER_MIDDLE[0], PAPER_MIDDLE[2]]),
    (dict(extra_conv6=True), F.relu, PAPER_MIDDLE + [("conv6", 1, False)]),    # Table 2's *
])
def test_model_variants_are_the_described_layer_sequence(kwargs, act, middle):
    model = AlexNet(num_classes=10, seed=0, bias_value=0.1, **kwargs).eval()
    with torch.no_grad():
        for layer in (model.fc6, model.fc7):
            layer.weight.mul_(10)
        x = torch.randn(2, 3, 227, 227) * 50
        expect = written_out(model, x, act, middle)
        assert expect.std() > 1e-4
        torch.testing.assert_close(model(x), expect, rtol=1e-5, atol=1e-4)


def test_a_removed_layers_successor_reads_its_predecessor_and_keeps_its_towers():
    paper = AlexNet(num_classes=1000)
    no3, no4 = AlexNet(num_classes=1000, removed_convs=["conv3"]), AlexNet(num_classes=1000, removed_convs=["conv4"])
    assert "conv3.weight" not in no3.state_dict() and "conv4.weight" not in no4.state_dict()
    assert (no3.conv4.in_channels, no3.conv4.groups) == (256, 2)    # reads pool2, per tower
    assert (no4.conv5.in_channels, no4.conv5.groups) == (384, 2)    # reads conv3, per tower
    assert n_params(no3) == n_params(paper) - conv_params(256, 384, 3) \
        - conv_params(384, 384, 3, 2) + conv_params(256, 384, 3, 2)
    assert n_params(no4) == n_params(paper) - conv_params(384, 384, 3, 2)
    six = AlexNet(num_classes=1000, extra_conv6=True)
    assert n_params(six) == n_params(paper) + conv_params(256, 256, 3)
    assert six.fc6.in_features == 256 * 6 * 6
    with pytest.raises(ValueError, match=r"bias_one names \['conv4'\], which this model does not have"):
        AlexNet(num_classes=10, removed_convs=["conv4"], bias_one=["conv4"])
    with pytest.raises(ValueError, match="removed_convs may name one of"):
        AlexNet(num_classes=10, removed_convs=["conv3", "conv4"])


def test_tanh_changes_only_the_activation():
    relu, tanh = AlexNet(**SMALL, seed=4), AlexNet(**SMALL, seed=4, activation="tanh")
    a, b = relu.state_dict(), tanh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 67, 67) * 50
    with torch.no_grad():
        assert not torch.allclose(relu.eval()(x), tanh.eval()(x))
