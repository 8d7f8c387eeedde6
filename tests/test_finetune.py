"""`repro train --init-from`: the paper's fine-tuning (section 6). A new run starts from
another run's layers where they fit; fc8 only when both were trained on the same class
list; a checkpoint that fits no conv layer, or a directory, is refused before anything
is written."""
import contextlib
import subprocess
import sys

import pytest
import torch

from repro import checkpoint
from repro.config import load_config, model_kwargs
from repro.data.shards import data_fingerprint, read_manifest
from repro.imagenet import ImageNetTask
from repro.model import build_model
from repro.preempt import StopFlag
from repro.tracking import read_metrics
from repro.train import setup_run
from run_helpers import ROOT, SMOKE
from shard_helpers import write_shards

FAST = ["data.crop_size=67", "data.workers=1", "train.deterministic=true"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 4-class run's checkpoint (a fresh model of another seed: its weights are not
    those a new model draws)."""
    tmp = tmp_path_factory.mktemp("source")
    shards = write_shards(tmp / "shards", classes=4, train=8, val=4, shard_size=4)
    cfg = load_config(SMOKE, FAST + ["model.num_classes=4", "model.seed=7"])
    state = {"model": build_model(model_kwargs(cfg)).state_dict(), "config": cfg.to_dict(),
             "classes": read_manifest(shards)["classes"], "data": data_fingerprint(shards),
             "global_step": 1}
    return checkpoint.save(state, tmp / "run" / "checkpoints", keep_last=1, is_best=False)


def start(cfg, shards, out, source_path):
    """A new run set up as `repro train --init-from source_path` sets it up."""
    def make(dist, device):
        task = ImageNetTask(cfg, shards, dist, device)
        task.plan_init(source_path)
        return task
    with contextlib.ExitStack() as stack:
        stop = StopFlag()
        stack.callback(stop.close)
        run = setup_run(make, cfg, out, stack, stop)
        run.tracker.finish(0)
    return run.task.placed.model.state_dict(), next(
        r for r in read_metrics(out) if r["event"] == "init_from")


def test_init_from_copies_what_fits_and_initialises_the_classifier(source, tmp_path, capsys):
    """On 3 classes from a 4-class checkpoint: the conv and hidden layers copied, fc8 as the
    paper initialises it (the same draw as a fresh model of this config: N(0, 0.01), bias
    0); the record says what was copied, the source's data, and whose statistics
    normalise the inputs."""
    three = write_shards(tmp_path / "three", classes=3, train=12, val=6, shard_size=6)
    cfg = load_config(SMOKE, FAST + ["model.num_classes=3"])
    state, record = start(cfg, three, tmp_path / "ft", source)
    weights = checkpoint.load(source)["model"]
    for key in state:
        if not key.startswith("fc8."):
            assert torch.equal(state[key], weights[key]), key
    fresh = build_model(model_kwargs(cfg)).state_dict()
    assert torch.equal(state["fc8.weight"], fresh["fc8.weight"]) and not state["fc8.bias"].any()
    assert abs(state["fc8.weight"].std().item() - 0.01) < 0.001
    assert (record["initialised"], record["unused"], record["same_classes"]) == (["fc8"], ["fc8"], False)
    assert len(record["copied"]) == 7 and record["checkpoint"] == str(source)
    assert record["source_data"] == checkpoint.load(source)["data"]
    assert "stats.npz" in record["normalised_with"]
    assert f"inputs normalised with {three}'s mean image and PCA, not the source's" in capsys.readouterr().out


@pytest.mark.parametrize("first_wnid, copied", [(0, True), (100, False)])
def test_fc8_is_copied_only_for_the_same_class_list(source, tmp_path, first_wnid, copied):
    """As many classes is not enough: other WNIDs make fc8's rows mean other things."""
    shards = write_shards(tmp_path / "s", classes=4, train=8, val=4, shard_size=4,
                          first_wnid=first_wnid)
    cfg = load_config(SMOKE, FAST + ["model.num_classes=4"])
    state, record = start(cfg, shards, tmp_path / "ft", source)
    assert torch.equal(state["fc8.weight"], checkpoint.load(source)["model"]["fc8.weight"]) is copied
    assert ("fc8" in record["copied"]) is copied and record["same_classes"] is copied


def cli(shards, out, init_from):
    return subprocess.run(
        [sys.executable, "-m", "repro.cli", "train", "--config", str(SMOKE), "--data", str(shards),
         "--out", str(out), "--init-from", str(init_from), *FAST, "model.num_classes=4",
         "schedule.epochs=1", "data.steps_per_epoch=1", "data.val_limit=4"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_a_checkpoint_that_fits_no_conv_layer_or_a_directory_is_refused(source, tmp_path):
    shards = write_shards(tmp_path / "s", classes=4, train=8, val=4, shard_size=4)
    foreign = checkpoint.save({"model": {"conv1.weight": torch.zeros(32, 3, 5, 5),
                                         "fc10.weight": torch.zeros(10, 64)}, "global_step": 1},
                              tmp_path / "cifar" / "checkpoints", keep_last=1, is_best=False)
    run = tmp_path / "run"
    r = cli(shards, run, foreign)
    assert r.returncode == 2, r.stderr
    assert "its conv layers do not fit this model (conv1)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not run.exists()
    r = cli(shards, run, source.parent.parent)          # the run dir, not its checkpoint
    assert r.returncode == 2 and "is a directory; give a checkpoint file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not run.exists()
    r = cli(shards, run, source)                        # no lock was left behind
    assert r.returncode == 0, r.stderr
