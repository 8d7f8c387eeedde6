"""`python -m repro.cifar figure1 | lrn` (the paper's Figure 1 and its LRN check on
CIFAR-10): short runs on generated sets in the python batches' format write the plot,
both curves and both test errors, and resume instead of training twice."""
import json

import pytest
import torch

from repro.cifar import experiments as cifar
from repro.cifar.train import lr_factor
from run_helpers import assert_same_weights

FAST = ["train.device=cpu", "logging.progress=off", "train.batch_size=8"]


def test_schedule_and_epochs_to_target():
    assert [lr_factor((3, 2, 2), e) for e in range(8)] == [1, 1, 1, 0.1, 0.1, 0.01, 0.01, 0.01]
    curve = [{"epoch": 0.5, "train_err": 60.0}, {"epoch": 1.0, "train_err": 30.0},
             {"epoch": 1.5, "train_err": 20.0}, {"epoch": 2.0, "train_err": 24.0}]
    assert cifar.epochs_to(curve, 25.0) == pytest.approx(1.25)
    assert cifar.epochs_to(curve, 60.0) == 0.5 and cifar.epochs_to(curve, 10.0) is None


def test_figure1_short_run_writes_the_plot_and_both_curves(tmp_path, capsys):
    torch.set_num_threads(1)
    root, out = tmp_path / "data", tmp_path / "out"
    args = ["figure1", "--root", str(root), "--out", str(out), "--lr-scales", "1,4",
            "--sweep-epochs", "1", "--epochs", "2", *FAST]
    assert cifar.main([*args, "--generate", "40,10"]) == 0
    printed = capsys.readouterr().out
    assert "ratio tanh/ReLU" in printed and "figure1.png" in printed
    png = out / "figure1" / "figure1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "figure1" / "figure1.json").read_text())
    for neuron in ("relu", "tanh"):
        r = result[neuron]
        assert [row["lr_scale"] for row in r["sweep"]] == [1, 4] and r["lr_scale"] in (1, 4)
        assert len(r["curve"]) in (5, 10) and r["curve"][0]["epoch"] == pytest.approx(0.2)
        records = [json.loads(line) for line in (out / "figure1" / neuron / "metrics.jsonl").open()]
        assert sum(r["event"] == "train" for r in records) == len(result[neuron]["curve"])
        assert (out / "figure1" / neuron / "checkpoints" / "last.pt").is_file()
    # the same command again resumes the finished runs: nothing is trained twice
    assert cifar.main(args) == 0
    assert " epoch " not in capsys.readouterr().out
    again = json.loads((out / "figure1" / "figure1.json").read_text())
    assert again["relu"]["curve"] == result["relu"]["curve"] and again["ratio"] == result["ratio"]


def test_lrn_short_run_tests_both_nets_beside_the_paper(tmp_path, capsys):
    torch.set_num_threads(1)
    root, out = tmp_path / "data", tmp_path / "out"
    assert cifar.main(["lrn", "--root", str(root), "--out", str(out), "--generate", "40,10",
                       "--epochs", "1", "--drop-epochs", "0", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "| with response normalisation |" in printed and "| 11 |" in printed and "| 13 |" in printed
    result = json.loads((out / "lrn" / "lrn.json").read_text())
    assert result["schedule"] == [1, 0, 0]
    for name in ("with", "without"):
        assert 0 <= result[name]["test_err"] <= 100 and "test_err_centre" in result[name]
        assert result[name]["epochs"] == 1
    state = torch.load(out / "lrn" / "without" / "checkpoints" / "last.pt", weights_only=False)
    assert not any(k.startswith("rnorm") for k in state["model"])
    assert state["config"]["net"]["lrn"] is False
    assert cifar.main(["lrn", "--root", str(root), "--out", str(out), "--epochs", "2",
                       "--drop-epochs", "0", *FAST]) == 2
    assert "belongs to a run with other settings" in capsys.readouterr().err


def test_a_stopped_run_resumes_to_the_uninterrupted_runs_numbers(tmp_path):
    """Stopped (as by SIGTERM) mid-epoch and again later: the experiment stops with 75
    each time, and the same call finishes with the weights and test errors of a run
    never stopped (crops drawn from seed, epoch and step; the order is the files')."""
    from repro.cifar.data import generate, load, provenance
    from repro.cifar.train import CifarConfig, train_run
    from repro.cifar.experiments import variant
    from stops import StopAfter

    torch.set_num_threads(1)
    root = tmp_path / "data"
    generate(root, 40, 10, seed=0)
    data, prov = load(root), provenance(root)
    cfg = variant(CifarConfig(), net__name="11pct", optim__phases=[2, 1], train__batch_size=8,
                  train__device="cpu", logging__progress="off")
    whole = train_run(cfg, data, prov, tmp_path / "whole")
    for reads in (4, 7):
        with pytest.raises(SystemExit) as e:
            train_run(cfg, data, prov, tmp_path / "parts", StopAfter(reads))
        assert e.value.code == 75
    parts = train_run(cfg, data, prov, tmp_path / "parts")
    def points(curve):
        return [(p["epoch"], p["train_err"], p["loss"]) for p in curve]
    assert parts["test_err"] == whole["test_err"] and points(parts["curve"]) == points(whole["curve"])
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=False)["model"]
            for d in ("whole", "parts"))
    assert_same_weights(a, b)


def test_sigterm_exits_75_and_the_same_command_finishes(tmp_path):
    import signal
    import subprocess
    import sys

    root, out = tmp_path / "data", tmp_path / "out"
    cmd = [sys.executable, "-m", "repro.cifar", "figure1", "--root", str(root), "--out", str(out),
           "--lr-scales", "1", "--epochs", "2", "--full", "train.device=cpu",
           "logging.progress=lines", "train.batch_size=8"]
    proc = subprocess.Popen([*cmd, "--generate", "400,10"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while not proc.stdout.readline().startswith("epoch 1 step 1/"):     # the first step's line
        assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    printed, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    assert "stop requested: checkpoint written at epoch 1 step " in printed
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming " in again.stdout and (out / "figure1" / "figure1.png").is_file()
