import pytest

from repro.model import AlexNet
from repro.summary import format_summary, layer_summary


@pytest.fixture(scope="module")
def rows():
    return layer_summary(AlexNet(), input_size=227)


def test_rows_follow_the_papers_feature_maps(rows):
    shapes = {r["name"]: r["out_shape"] for r in rows}
    assert [r["name"] for r in rows] == ["conv1", "norm1", "pool1", "conv2", "norm2", "pool2", "conv3",
                                         "conv4", "conv5", "pool5", "fc6", "fc7", "fc8"]
    # Figure 2's maps (H x W x C in the paper; (C, H, W) here).
    assert [shapes[n] for n in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")] == [
        (96, 55, 55), (96, 27, 27), (256, 27, 27), (256, 13, 13), (384, 13, 13), (384, 13, 13),
        (256, 13, 13), (256, 6, 6)]
    assert shapes["fc8"] == (1000,)


def test_macs_and_params(rows):
    # (name, out side, out channels, in channels per group, kernel)
    convs = [("conv1", 55, 96, 3, 11), ("conv2", 27, 256, 48, 5), ("conv3", 13, 384, 256, 3),
             ("conv4", 13, 384, 192, 3), ("conv5", 13, 256, 192, 3)]
    fcs = [("fc6", 9216, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)]
    expected = {n: s * s * c_out * c_in * k * k for n, s, c_out, c_in, k in convs}
    expected |= {n: i * o for n, i, o in fcs}
    macs = {r["name"]: r["macs"] for r in rows}
    assert {n: macs[n] for n in expected} == expected
    assert sum(macs.values()) == sum(expected.values())
    assert sum(expected.values()) / 1e9 == pytest.approx(0.724, abs=5e-4)
    params = {r["name"]: r["params"] for r in rows}
    assert params["conv2"] == 256 * 48 * 25 + 256 and params["fc6"] == 9216 * 4096 + 4096
    assert sum(params.values()) == 60_965_224


def test_format_summary_has_totals(rows):
    text = format_summary(rows)
    lines = text.splitlines()
    assert len(lines) == len(rows) + 3  # header, rows, rule, totals
    assert lines[-1].startswith("total") and "60,965,224" in lines[-1] and "0.724 G" in lines[-1]
    assert "96x55x55" in text and "256x6x6" in text


def test_summary_leaves_training_mode_and_hooks_alone():
    model = AlexNet(num_classes=10, input_size=67).train()
    rows = layer_summary(model, input_size=67)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    assert rows[-1]["out_shape"] == (10,)
