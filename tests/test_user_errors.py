"""Errors that point the right way, one line each, and one convention for exit statuses
(repro.exits): bad input, a bad config and a refused resume are 2; nothing already written
is changed."""
import re
import shutil
import subprocess
import sys

import pytest

from data_prep_helpers import ROOT, build, fixture, manifest
from repro.cli import main
from repro.tracking import Tracker
from shard_helpers import write_shards

SMOKE = ROOT / "configs" / "smoke.yaml"
FAST = ["model.num_classes=4", "data.crop_size=67", "data.steps_per_epoch=1", "data.workers=1",
        "schedule.epochs=1", "checkpoint.every_minutes=1000"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), classes=4, train=20, val=4,
                        shard_size=10)


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
