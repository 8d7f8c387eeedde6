"""Errors that point the right way, one line each, and one convention for exit statuses
(repro.exits): bad input, a bad config and a refused resume are 2; nothing already written
is changed."""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_prep.atomic import OutputError
from data_prep.build_shards import BuildError
from data_prep.manifest import ShardsError
from data_prep.records import SourceError
from data_prep.tarindex import TarError
from data_prep_helpers import ROOT, build, fixture, manifest
from repro import checkpoint
from repro.checkpoint import CheckpointError, NoSpace, RunLocked, lock_run
from repro.cifar.data import CifarDataError
from repro.cli import main
from repro.config import ConfigError, load_config, model_kwargs
from repro.distributed import DeviceError
from repro.evaluate import EvalError
from repro.exits import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_NO_SPACE, EXIT_NONFINITE,
                         EXIT_PREEMPTED, EXIT_TERMINATED, Refused, ReproError)
from repro.model import build_model
from repro.tracking import Tracker
from run_helpers import SMOKE

FAST = ["model.num_classes=4", "data.crop_size=67", "data.steps_per_epoch=1", "data.workers=1",
        "schedule.epochs=1", "checkpoint.every_minutes=1000"]
SHARDS = dict(classes=4, train=20, val=4, shard_size=10)


def train(capsys, data, out, *overrides) -> tuple[int, str]:
    code = main(["train", "--config", str(SMOKE), "--data", str(data), "--out", str(out), *FAST,
                 *overrides])
    return code, capsys.readouterr().err


def one_line(err: str, *words: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and all(w in lines[0] for w in words)


def test_data_pointing_at_imagenet_itself_says_build_shards_from_it(tmp_path, capsys):
    src = tmp_path / "imagenet"
    fixture(src, "official", quirks=False)
    code, err = train(capsys, src, tmp_path / "run")
    assert code == 2 and one_line(err, f"error: {src / 'manifest.json'}: no manifest.json: {src} "
                                       "is ImageNet itself (official layout), not its shards",
                                  f"--source {src} --out SHARDS"), err
    assert "--out " + str(src) not in err and not (tmp_path / "run").exists()


def test_an_unfinished_build_says_run_the_same_command_and_that_command_finishes_it(tmp_path,
                                                                                   capsys):
    src, out = tmp_path / "src", tmp_path / "shards"
    fixture(src, "folder", quirks=False)
    assert build(src, out, part=0, parts=2) is None      # the other part's shards are missing
    code, err = train(capsys, out, tmp_path / "run")
    m = re.search(r"run the same build_shards command to finish it: `(.*)`$", err.strip())
    assert code == 2 and one_line(err, f"{out} holds an unfinished build (3 shards finished)"), err
    assert m[1] == f"python -m data_prep.build_shards --source {src} --out {out} --shard-size 8 --splits train,val"
    v = subprocess.run([sys.executable, "-m", "data_prep.verify", str(out)], cwd=ROOT,
                       capture_output=True, text=True)
    assert v.returncode == 2 and "unfinished build" in v.stderr, v.stderr
    done = subprocess.run([sys.executable, *m[1].split()[1:]], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert manifest(out)["splits"]["train"]["count"] == 30 and not (out / ".build").exists()


def test_out_that_is_a_file_is_refused_and_left_alone(shards, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out in (afile, afile / "run"):
        code, err = train(capsys, shards, out)
        assert code == 2 and one_line(err, "error: ", str(afile), "not a directory"), err
    src = tmp_path / "src"
    fixture(src, "folder", quirks=False)
    r = subprocess.run([sys.executable, "-m", "data_prep.build_shards", "--source", str(src),
                        "--out", str(afile)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and one_line(r.stderr, f"--out {afile}: exists and is not a "
                                                    "directory; give a directory"), r.stderr
    assert afile.read_text() == "mine"


@pytest.mark.parametrize("overrides, words", [
    (["model.num_classes=5"], ["has 4 classes but model.num_classes = 5"]),
    (["model.in_channels=1"], ["model.in_channels = 1", "RGB"]),     # crashed after the run dir
    (["model.bias_one=[fc9]"], ["model.bias_one", "fc9"]),
    (["data.crop_size=10"], ["data.crop_size = 10", "too small"]),
])
def test_bad_settings_exit_2_before_anything_is_written(shards, tmp_path, capsys, overrides,
                                                        words):
    code, err = train(capsys, shards, tmp_path / "run", *overrides)
    assert code == 2 and one_line(err, *words), err
    assert not (tmp_path / "run").exists()


def test_a_refused_resume_exits_2_and_changes_nothing(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(capsys, shards, run)[0] == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".lock"}
    code, err = train(capsys, shards, run, "optim.lr=0.05")
    assert code == 2 and one_line(err, "belongs to a run with other settings", "optim.lr"), err
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    (other / "manifest.json").write_text((other / "manifest.json").read_text().replace(
        "n00000003", "n00000009"))
    code, err = train(capsys, other, run)
    assert code == 2 and one_line(err, "lists other classes than the shards"), err
    assert {p: p.read_bytes() for p in before} == before


def test_a_wandb_failure_is_one_plain_line(tmp_path, capsys):
    (tmp_path / "wandb_id.txt").mkdir()          # the run id cannot be read: W&B cannot start
    tracker = Tracker(tmp_path, {}, "offline", "p")
    err = capsys.readouterr().err
    assert tracker.wandb is None and one_line(
        err, "warning: W&B logging disabled for this run (metrics.jsonl has every record): "
             "IsADirectoryError"), err
    assert "UserWarning" not in err and ".py:" not in err


# ---- one error type: each project error through the real `repro`, its documented status ----
def eval_checkpoint(path: Path) -> Path:
    """A checkpoint `repro eval` takes: the smoke model (FAST's size) and its config."""
    cfg = load_config(SMOKE, FAST)
    torch.save({"model": build_model(model_kwargs(cfg)).state_dict(), "config": cfg.to_dict(),
                "format_version": checkpoint.FORMAT_VERSION}, path)
    return path


def test_each_project_error_is_one_line_and_its_status_through_repro(shards, tmp_path):
    """Real bad input meets each error type in a `repro` process of its own; each reaches the
    one handler as a ReproError: `error: <what>` on one line, and status 2 (README)."""
    ckpt = eval_checkpoint(tmp_path / "good.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "afile").write_text("mine")
    torn = tmp_path / "torn"                       # a val shard cut short after the build
    shutil.copytree(shards, torn)
    val = torn / manifest(torn)["splits"]["val"]["shards"][0]["name"]
    val.write_bytes(val.read_bytes()[:3000])
    locked = tmp_path / "locked"
    train = ["train", "--config", SMOKE, "--data", shards, *FAST]
    cases = {  # type: (command line, words its one line holds)
        ConfigError: (["config", "--config", tmp_path / "nope.yaml"], ["config file not found"]),
        ShardsError: ([*train[:3], "--data", tmp_path, "--out", tmp_path / "r1"],
                      ["manifest.json: no manifest.json"]),
        Refused: ([*train, "--out", tmp_path / "r2", "--resume"], ["--resume: no checkpoint in"]),
        RunLocked: ([*train, "--out", locked], [f"{locked} is being trained by pid {os.getpid()}"]),
        CheckpointError: ([*train, "--out", tmp_path / "r3", "--init-from", tmp_path / "none.pt"],
                          ["none.pt: no such checkpoint file"]),
        EvalError: (["eval", "--checkpoint", tmp_path / "none.pt", "--data", shards],
                    ["none.pt: checkpoint not found"]),
        OutputError: (["eval", "--checkpoint", ckpt, "--data", shards, "--out", tmp_path / "afile"],
                      ["afile", "not a directory"]),
        TarError: (["eval", "--checkpoint", ckpt, "--data", torn, "--device", "cpu",
                    "--workers", "1"], [val.name, "truncated"]),
    }
    if not torch.cuda.is_available():
        cases[DeviceError] = (["eval", "--checkpoint", ckpt, "--data", shards, "--device", "cuda"],
                              ["no CUDA device is available"])
    lock = lock_run(locked)                        # a live trainer of `locked`: this process
    try:
        procs = {kind: subprocess.Popen([sys.executable, "-m", "repro.cli", *map(str, argv)],
                                        cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
                 for kind, (argv, _) in cases.items()}
        results = {kind: (p.communicate()[1], p.returncode) for kind, p in procs.items()}
    finally:
        lock.close()
    for kind, (err, code) in results.items():
        assert issubclass(kind, ReproError) and kind.exit_status == EXIT_BAD_INPUT
        assert code == 2 and one_line(err, "error: ", *cases[kind][1]), (kind.__name__, err)
        assert not err.startswith("error: Caught"), err     # a loader worker's wrapping undone


def test_a_full_disk_and_the_stop_statuses_are_the_documented_ones():
    """README's table: 74 for a full disk (NoSpace), 75 after a stop signal, 130 Ctrl-C,
    143 build_shards on SIGTERM, 3 non-finite."""
    assert issubclass(NoSpace, ReproError) and NoSpace.exit_status == EXIT_NO_SPACE == 74
    assert (EXIT_NONFINITE, EXIT_PREEMPTED, EXIT_INTERRUPTED, EXIT_TERMINATED) == (
        3, 75, 128 + signal.SIGINT, 128 + signal.SIGTERM)
    assert issubclass(CifarDataError, ReproError) and issubclass(SourceError, ReproError)
    assert issubclass(BuildError, ReproError)
