"""The d2l.ai variant: its config builds the book's net, and `python -m repro.d2l` trains
it on Fashion-MNIST files in torchvision's raw IDX layout (a tiny generated set here)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from repro import d2l
from repro.config import load_config, model_kwargs
from repro.exits import Refused
from repro.lrn import LocalResponseNorm
from repro.model import build_model

CONFIG = Path(__file__).parent.parent / "configs" / "d2l_fashion_mnist.yaml"


def test_config_is_the_books_net():
    cfg = load_config(CONFIG)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.01, 0.0, 0.0)
    assert (cfg.data.batch_size, cfg.schedule.epochs, cfg.schedule.kind) == (128, 10, "constant")
    model = build_model(model_kwargs(cfg))
    assert model.fc6.in_features == 6400
    assert model.conv1.in_channels == 1 and model.conv1.padding == (1, 1) and model.conv2.groups == 1
    assert not any(isinstance(m, LocalResponseNorm) for m in model.modules())
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 1, 224, 224)).shape == (2, 10)


def test_xavier_is_d2ls_init():
    cfg = load_config(CONFIG, ["data.crop_size=67"])
    assert cfg.model.init == "xavier"
    model = build_model(model_kwargs(cfg))
    bias = build_model(model_kwargs(cfg) | {"init": "torch"}).fc7.bias
    for layer in (model.conv1, model.fc7):
        w = layer.weight.detach()
        receptive = w[0, 0].numel()                       # 121 for conv1, 1 for a linear layer
        fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
        bound = (6 / (fan_in + fan_out)) ** 0.5           # xavier_uniform_, gain 1
        assert w.abs().max() <= bound
        assert abs(w.std().item() - bound / 3 ** 0.5) < 0.05 * bound
    assert torch.equal(model.fc7.bias, bias)


def test_generated_files_load_with_torchvision(tmp_path):
    d2l.generate(tmp_path, 24, 12)
    train, test = d2l.fashion_mnist(tmp_path, 32, download=False)
    x, y = train[3]
    assert (len(train), len(test), x.shape, y) == (24, 12, (1, 32, 32), 3)
    assert 0.0 <= x.min() and x.max() <= 1.0
    train, _ = d2l.fashion_mnist(tmp_path, 28, download=False)   # 28: no resize
    for i in (0, 7, 13):
        x, y = train[i]
        bright = (x[0].mean(1) > 0.5).nonzero().flatten().tolist()
        assert bright == list(range(2 * y, 2 * y + 5))           # the band's rows give the class


def test_missing_data_says_download(tmp_path):
    with pytest.raises(SystemExit, match="--download"):
        d2l.main(["--config", str(CONFIG), "--root", str(tmp_path)])


def test_runner_trains_one_epoch_and_writes_metrics(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert d2l.main(["--config", str(CONFIG), "--root", str(tmp_path / "data"), "--out", str(out),
                     "--generate", "24,12",
                     "data.crop_size=67", "data.batch_size=8", "data.workers=0",
                     "schedule.epochs=1", "train.device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1: loss" in printed and "examples/sec on cpu" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in records if r["event"] == "epoch"]
    assert len(epoch) == 1 and epoch[0]["examples"] == 24 and epoch[0]["step"] == 3
    assert np.isfinite(epoch[0]["loss"]) and epoch[0]["examples_per_s"] > 0
    assert 0.0 <= epoch[0]["test_acc"] <= 1.0 and 0.0 <= epoch[0]["train_acc"] <= 1.0
    assert records[-1]["event"] == "done"
    assert load_config(out / "config.yaml").data.crop_size == 67


def test_generate_wants_two_counts(tmp_path, capsys):
    with pytest.raises(SystemExit):
        d2l.main(["--config", str(CONFIG), "--root", str(tmp_path), "--generate", "100"])
    assert "N_TRAIN,N_TEST (two counts), got '100'" in capsys.readouterr().err
    assert not (tmp_path / "FashionMNIST").exists()


def test_generate_never_overwrites_a_data_set(tmp_path):
    d2l.generate(tmp_path, 20, 10, seed=0)
    before = {p.name: p.read_bytes() for p in (tmp_path / "FashionMNIST" / "raw").iterdir()}
    with pytest.raises(SystemExit, match="is not empty"):
        d2l.generate(tmp_path, 30, 10, seed=1)
    after = {p.name: p.read_bytes() for p in (tmp_path / "FashionMNIST" / "raw").iterdir()}
    assert after == before and len(before) == 4


def test_the_train_switches_apply_as_in_repro_train(tmp_path):
    """d2l builds its model with repro.placement, as every entry point does, so the train
    section is honoured, not silently dropped: switches the towers cannot run are
    refused, and the two-group net trains as two towers (on one CPU here) to the same
    numbers as the one-device model."""
    torch.set_num_threads(1)
    d2l.generate(tmp_path, 16, 8, seed=0)
    base = ["data.crop_size=67", "data.batch_size=8", "data.workers=0", "schedule.epochs=1",
            "train.device=cpu"]
    two = base + ["model.groups=2", "model.seed=0"]
    with pytest.raises(Refused, match="apply to the one-device model"):
        d2l.run(load_config(CONFIG, two + ["train.parallel=towers", "train.split_groups=true"]),
                tmp_path)
    single = d2l.run(load_config(CONFIG, two), tmp_path)
    towers = d2l.run(load_config(CONFIG, two + ["train.parallel=towers"]), tmp_path)
    assert towers["loss"] == pytest.approx(single["loss"], rel=1e-4)
    assert (towers["train_acc"], towers["test_acc"]) == (single["train_acc"], single["test_acc"])
