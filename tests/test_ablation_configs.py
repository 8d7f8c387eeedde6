"""Each ablation config changes exactly the keys its ablation is about, loads, builds a
model, and has a claim; the claims table puts measured runs beside the paper's deltas."""
from pathlib import Path

import pytest
import torch

from repro.ablations import ABLATIONS_DIR, CLAIMS, ablation_table, config_path
from repro.config import load_config, model_kwargs
from repro.model import build_model

CONFIGS = Path(__file__).parent.parent / "configs"

# Written out by hand: what each ablation must change, and nothing else.
EXPECTED = {
    "no_lrn": {"model.lrn": "none"},
    "no_overlap_pool": {"model.pool_kernel": 2},
    "no_pca_noise": {"augment.pca_std": 0.0},
    "one_gpu_half_kernels": {"model.groups": 1, "model.half_kernels": True},
    "lrn_cuda_convnet": {"model.lrn": "cuda-convnet"},
    "lrn_caffe": {"model.lrn": "caffe", "model.lrn_k": 1.0},
    "no_dropout": {"model.dropout": 0.0},
    "no_translations_reflections": {"augment.random_crop": False, "augment.flip": False},
    "no_conv3": {"model.removed_convs": ["conv3"]},
    "no_conv4": {"model.removed_convs": ["conv4"], "model.bias_one": ["conv2", "conv5", "fc6", "fc7"]},
    "tanh": {"model.activation": "tanh"},
}


def flat(cfg) -> dict:
    return {f"{section}.{key}": value for section, body in cfg.to_dict().items()
            for key, value in body.items()}


def test_every_config_has_a_claim_and_an_expectation():
    names = {p.stem for p in ABLATIONS_DIR.glob("*.yaml")}
    assert names == set(CLAIMS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ablation_changes_exactly_its_keys(name):
    paper = flat(load_config(CONFIGS / "alexnet_paper.yaml"))
    cfg = load_config(config_path(name))
    changed = {key: value for key, value in flat(cfg).items() if value != paper[key]}
    assert changed == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ablation_builds_a_model(name):
    # The config as it is (227 input, 1000 classes), built on the meta device: shapes only.
    cfg = load_config(config_path(name))
    with torch.device("meta"):
        model = build_model(model_kwargs(cfg))
    assert model.fc8.out_features == 1000
    assert model.fc6.in_features == 256 * 6 * 6   # 2x2/2 pooling keeps pool5 at 6x6 too
    if name == "one_gpu_half_kernels":
        assert (model.conv1.out_channels, model.conv5.out_channels, model.conv2.groups) == (48, 256, 1)
    if name == "no_overlap_pool":
        assert model.pool1.kernel_size == 2 and model.pool1.stride == 2
    if name == "no_lrn":
        assert isinstance(model.norm1, torch.nn.ReLU)    # the ReLU stays, the LRN goes
    if name in ("no_conv3", "no_conv4"):
        assert not hasattr(model, name[3:]) and len(model.convs) == 4
    if name == "tanh":
        assert model.activation == "tanh" and isinstance(model.norm1[0], torch.nn.Tanh)


def test_claims_are_the_papers_numbers():
    assert (CLAIMS["no_lrn"]["top1"], CLAIMS["no_lrn"]["top5"]) == (1.4, 1.2)
    assert (CLAIMS["no_overlap_pool"]["top1"], CLAIMS["no_overlap_pool"]["top5"]) == (0.4, 0.3)
    assert (CLAIMS["one_gpu_half_kernels"]["top1"], CLAIMS["one_gpu_half_kernels"]["top5"]) == (1.7, 1.2)
    assert CLAIMS["no_pca_noise"]["top1"] == 1.0 and CLAIMS["no_pca_noise"]["top5"] is None
    # section 7: "a loss of about 2% for the top-1 performance"
    assert CLAIMS["no_conv3"]["top1"] == CLAIMS["no_conv4"]["top1"] == 2.0
    assert all(CLAIMS[n]["top1"] is None for n in ("no_dropout", "no_translations_reflections", "tanh"))


def test_ablation_table_against_hand_computed_deltas():
    table = ablation_table({"no_lrn": (42.0, 19.5), "configs/ablations/no_pca_noise.yaml": (41.2, 18.1),
                            "mystery": (40.0, 18.0)}, baseline=(40.7, 18.2))
    assert table.splitlines() == [
        "| run | top-1 err | top-5 err | Δ top-1 | Δ top-5 | claimed Δ top-1 | claimed Δ top-5 | source |",
        "|---|---|---|---|---|---|---|---|",
        "| paper config (baseline run) | 40.70 | 18.20 | | | | | |",
        "| no_lrn | 42.00 | 19.50 | +1.30 | +1.30 | +1.40 | +1.20 | section 3.3 |",
        "| no_pca_noise | 41.20 | 18.10 | +0.50 | -0.10 | +1.00 | — | section 4.1 (top-1 'by over 1%') |",
        "| mystery | 40.00 | 18.00 | -0.70 | -0.20 | — | — | — |",
    ]
