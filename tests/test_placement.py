"""repro.placement: the one way every entry point builds, places and wraps a config's model.
(The towers' arithmetic is in test_towers.py, DDP's in test_ddp.py.)"""
from __future__ import annotations

import pytest
import torch

from repro.config import load_config
from repro.distributed import DistContext
from repro.exits import Refused
from repro.placement import make_normalizer, place_model
from repro.step import build_optimizer, train_step
from repro.towers import TowerAlexNet
from run_helpers import SMOKE

CPU = torch.device("cpu")
SMALL = ["data.crop_size=67", "model.num_classes=5", "train.device=cpu"]


def config(*overrides):
    return load_config(SMOKE, SMALL + list(overrides))


def test_towers_refuse_the_conv_switches_and_several_processes():
    with pytest.raises(Refused, match="apply to the one-device model"):
        place_model(config("train.parallel=towers", "train.split_groups=true"), CPU)
    with pytest.raises(Refused, match="apply to the one-device model"):
        place_model(config("train.parallel=towers", "train.pad_input_channels=4"), CPU)
    with pytest.raises(Refused, match="launch a single process"):
        place_model(config("train.parallel=towers"), CPU, DistContext(rank=0, world=2))


def test_evaluation_runs_one_device_in_eval_mode_in_fp32_on_a_cpu_with_the_state_loaded():
    torch.manual_seed(0)
    state = place_model(config("model.seed=7"), CPU).model.state_dict()
    placed = place_model(config("train.parallel=towers", "train.precision=bf16",
                                "train.channels_last=true"), CPU, training=False, state=state)
    assert placed.net is placed.model and not placed.model.training
    assert not isinstance(placed.model, TowerAlexNet)        # towers are a way to train
    assert placed.precision == "fp32"                        # bf16 on a CPU: slow, no gain
    for k, v in placed.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert placed.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_training_places_the_towers_and_checkpoints_their_optimizer_in_the_one_device_layout():
    """Two towers on one CPU: a step's momentum, saved through Placed.optimizer_state, loads
    into a one-device run (Placed.load_optimizer_state) and saves back unchanged."""
    torch.manual_seed(0)
    towers = place_model(config("train.parallel=towers"), CPU)
    assert isinstance(towers.model, TowerAlexNet) and towers.net is towers.model
    opt = build_optimizer(config(), towers.model)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 67, 67, generator=g) * 50, torch.randint(0, 5, (4,), generator=g)
    train_step(towers.net, opt, x, y, 1, 4)
    saved = towers.optimizer_state(opt)

    single = place_model(config(), CPU)
    assert not isinstance(single.model, TowerAlexNet)
    assert len(saved["state"]) == len(list(single.model.parameters()))
    single_opt = build_optimizer(config(), single.model)
    single.load_optimizer_state(single_opt, saved)
    again = single.optimizer_state(single_opt)
    for i, s in saved["state"].items():
        assert torch.equal(again["state"][i]["momentum_buffer"], s["momentum_buffer"])
    assert any(s["momentum_buffer"].abs().sum() > 0 for s in saved["state"].values())


def test_the_banner_says_where_it_runs():
    n = torch.get_num_threads()
    assert place_model(config(), CPU).devices(CPU) == f"cpu ({n} threads)"
    towers = place_model(config("train.parallel=towers"), CPU)
    assert towers.devices(CPU) == f"the paper's two towers on cpu and cpu ({n} threads)"


def test_the_normalizer_gives_the_models_dtype_and_layout_in_training_only(make_shards):
    stats = make_shards(classes=2, train=4, val=2, shard_size=4) / "stats.npz"
    bf16 = config("train.precision=bf16", "train.channels_last=true")
    train, evaluate = make_normalizer(bf16, stats, CPU), make_normalizer(bf16, stats, CPU, False)
    assert train.dtype == torch.bfloat16 and evaluate.dtype == torch.float32
    assert train.memory_format == evaluate.memory_format == torch.channels_last
    assert make_normalizer(config(), stats, CPU).dtype == torch.float32
