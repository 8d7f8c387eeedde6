"""The d2l.ai variant: its config builds the book's net, and `python -m repro.d2l` trains
it on Fashion-MNIST's IDX files (a tiny generated set here; tests/test_fashion_mnist.py
reads the real one) through the project's one training loop."""
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from repro import d2l, fashion_mnist
from repro.config import load_config, model_kwargs
from repro.lrn import LocalResponseNorm
from repro.model import build_model
from repro.tracking import read_metrics
from run_helpers import D2L_CONFIG, D2L_TINY, assert_same_weights
from stops import StopAfter


def test_config_is_the_books_net():
    cfg = load_config(D2L_CONFIG)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.01, 0.0, 0.0)
    assert (cfg.data.batch_size, cfg.schedule.epochs, cfg.schedule.kind) == (128, 10, "constant")
    model = build_model(model_kwargs(cfg))
    assert model.fc6.in_features == 6400
    assert model.conv1.in_channels == 1 and model.conv1.padding == (1, 1) and model.conv2.groups == 1
    assert not any(isinstance(m, LocalResponseNorm) for m in model.modules())
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 1, 224, 224)).shape == (2, 10)


def test_xavier_is_d2ls_init():
    cfg = load_config(D2L_CONFIG, ["data.crop_size=67"])
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


def test_generated_bands_reach_the_net_as_d2l_feeds_them(tmp_path):
    fashion_mnist.generate(tmp_path, 24, 12)
    data = fashion_mnist.load(tmp_path)
    x = fashion_mnist.d2l_input(torch.tensor(data.train_images), 28)   # 28: no resize
    assert x.shape == (24, 1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0
    for i in (0, 7, 13):
        bright = (x[i, 0].mean(1) > 0.5).nonzero().flatten().tolist()
        y = int(data.train_labels[i])
        assert bright == list(range(2 * y, 2 * y + 5))           # the band's rows give the class


def test_missing_data_is_one_line_and_exit_2(tmp_path, capsys):
    assert d2l.main(["--config", str(D2L_CONFIG), "--root", str(tmp_path), "--out",
                     str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_runner_trains_one_epoch_and_writes_metrics(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert d2l.main(["--config", str(D2L_CONFIG), "--root", str(tmp_path / "data"), "--out", str(out),
                     "--generate", "24,12", *D2L_TINY, "schedule.epochs=1"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1: loss" in printed and "examples/sec on cpu" in printed
    assert "generated Fashion-MNIST, 24 train and 12 test examples" in printed
    records = read_metrics(out)
    data = next(r for r in records if r["event"] == "data")
    assert data["data"] == "generated" and len(data["files"]) == 4
    assert (data["train_examples"], data["test_examples"]) == (24, 12)
    (epoch,) = [r for r in records if r["event"] == "val"]
    assert epoch["train_images"] == 24 and epoch["global_step"] == 3 and epoch["n"] == 12
    assert np.isfinite(epoch["train_loss"]) and epoch["train_images_per_s"] > 0
    assert 0.0 <= epoch["test_acc"] <= 1.0 and epoch["test_acc"] == pytest.approx(1 - epoch["top1_err"] / 100)
    assert records[-1]["event"] == "done"
    assert (out / "checkpoints" / "last.pt").is_file()
    assert load_config(out / "config.yaml").data.crop_size == 67


def test_generate_wants_two_counts(tmp_path, capsys):
    assert d2l.main(["--config", str(D2L_CONFIG), "--root", str(tmp_path), "--generate", "100"]) == 2
    assert "N_TRAIN,N_TEST (two counts), got '100'" in capsys.readouterr().err
    assert not (tmp_path / "FashionMNIST").exists()


def test_a_stopped_run_resumes_to_the_uninterrupted_runs_numbers(tmp_path):
    """Stopped (as by SIGTERM) mid-epoch, then in its validation: exit 75 each time, and the
    same command finishes with the weights and records of a run never stopped."""
    torch.set_num_threads(1)
    fashion_mnist.generate(tmp_path / "data", 40, 16, seed=0)
    cfg = load_config(D2L_CONFIG, D2L_TINY + ["schedule.epochs=2"])
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert d2l.run(cfg, tmp_path / "data", whole) == 0
    assert d2l.run(cfg, tmp_path / "data", parts, stop=StopAfter(3)) == 75
    assert d2l.run(cfg, tmp_path / "data", parts, stop=StopAfter(5)) == 75
    assert d2l.run(cfg, tmp_path / "data", parts) == 0
    # a library caller's process takes SIGTERM as before: processes it starts later (a
    # build's pool workers) inherit an ignored signal, and Pool.terminate would hang
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=False) for d in (whole, parts))
    assert_same_weights(a["model"], b["model"])
    vals = [[(r["epoch"], r["top1_err"]) for r in read_metrics(d) if r["event"] == "val"]
            for d in (whole, parts)]
    assert vals[0] == vals[1] and len(vals[0]) == 2


@pytest.mark.parametrize("signum, status, says", [(signal.SIGTERM, 75, "stop requested"),
                                                  (signal.SIGINT, 130, "interrupted")])
def test_a_stop_signal_checkpoints_and_a_second_run_is_locked_out(tmp_path, signum, status, says):
    """SIGTERM (SLURM) exits 75, Ctrl-C 130: each after a checkpoint, in one line."""
    fashion_mnist.generate(tmp_path / "data", 800, 8, seed=0)
    cmd = [sys.executable, "-m", "repro.d2l", "--config", str(D2L_CONFIG), "--root",
           str(tmp_path / "data"), "--out", str(tmp_path / "run"), *D2L_TINY, "schedule.epochs=1",
           "logging.progress=lines"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not proc.stdout.readline().startswith("epoch 1 step 1/"):     # the first step's line
        assert proc.poll() is None
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == status, err
    assert f"{says}: checkpoint written at epoch 1 step " in out and "Traceback" not in err
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    from repro.checkpoint import lock_run
    with lock_run(tmp_path / "run"):
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "is being trained by pid" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_the_train_switches_apply_as_in_repro_train(tmp_path):
    """d2l builds its model with repro.placement, as every entry point does, so the train
    section is honoured, not silently dropped: switches the towers cannot run are
    refused, and the two-group net trains as two towers (on one CPU here) to the same
    numbers as the one-device model."""
    from repro.exits import Refused

    torch.set_num_threads(1)
    fashion_mnist.generate(tmp_path, 16, 8, seed=0)
    two = D2L_TINY + ["schedule.epochs=1", "model.groups=2", "model.seed=0"]
    with pytest.raises(Refused, match="apply to the one-device model"):
        d2l.run(load_config(D2L_CONFIG, two + ["train.parallel=towers", "train.split_groups=true"]),
                tmp_path, tmp_path / "refused")
    assert d2l.run(load_config(D2L_CONFIG, two), tmp_path, tmp_path / "single") == 0
    assert d2l.run(load_config(D2L_CONFIG, two + ["train.parallel=towers"]), tmp_path, tmp_path / "towers") == 0
    single, towers = d2l.summary(tmp_path / "single"), d2l.summary(tmp_path / "towers")
    assert towers["loss"] == pytest.approx(single["loss"], rel=1e-4)
    assert (towers["train_acc"], towers["test_acc"]) == (single["train_acc"], single["test_acc"])


@pytest.mark.skipif(not (fashion_mnist.SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="the real Fashion-MNIST is not installed (Debian: dataset-fashion-mnist)")
def test_a_short_run_on_the_real_set_records_it_as_real(tmp_path, capsys):
    """The issue's command: two steps on the real set, read from where Debian installs it."""
    torch.set_num_threads(1)
    assert d2l.main(["--root", str(fashion_mnist.SYSTEM_DIR), "--out", str(tmp_path / "run"),
                     "data.steps_per_epoch=2", "data.val_limit=256", "schedule.epochs=1",
                     "data.crop_size=67", "logging.progress=off"]) == 0
    assert ("real Fashion-MNIST, 60000 train and 10000 test examples (testing on the first 256)"
            in capsys.readouterr().out)
    data = next(r for r in read_metrics(tmp_path / "run") if r["event"] == "data")
    assert (data["data"], data["train_examples"], data["test_examples"]) == ("real", 60000, 10000)
    (val,) = [r for r in read_metrics(tmp_path / "run") if r["event"] == "val"]
    assert val["n"] == 256 and val["train_images"] == 256
