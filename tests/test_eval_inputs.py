"""repro eval / report / figures on bad input and bad output paths: one line on stderr,
status 2, and nothing already written changed or lost."""
import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from data_prep.atomic import TMP_MARK
from repro.cli import main
from repro.config import load_config
from repro.evaluate import EvalError, write_outputs
from run_helpers import CLASSES, SMOKE, make_checkpoint

SHARDS = dict(classes=CLASSES, train=8, val=6, shard_size=6)


@pytest.fixture(scope="module")
def model_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("model_ckpt") / "a.pt")


def run(capsys, *argv) -> tuple[int, str]:
    code = main([*map(str, argv)])
    err = capsys.readouterr().err
    return code, err


def one_line_error(err: str, *words: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words)


def test_eval_refuses_an_output_path_before_evaluating(shards, model_ckpt, tmp_path, capsys):
    afile = tmp_path / "afile.txt"
    afile.write_text("mine")
    for out, words in ((afile, ["afile.txt", "not a directory"]),
                       (afile / "sub", ["afile.txt", "is not a directory"])):
        code, err = run(capsys, "eval", "--checkpoint", model_ckpt, "--data", shards, "--device", "cpu",
                        "--out", out)
        assert code == 2 and one_line_error(err, *words), err
    assert afile.read_text() == "mine"


def test_eval_of_a_run_directory_names_the_checkpoint_to_give(shards, tmp_path, capsys):
    code, err = run(capsys, "eval", "--checkpoint", tmp_path, "--data", shards)
    assert code == 2 and one_line_error(err, "is a directory", "checkpoints/best.pt"), err


def test_report_refuses_a_directory_as_its_output(shards, model_ckpt, tmp_path, capsys):
    code, err = run(capsys, "report", tmp_path, "--data", shards, "--checkpoint", model_ckpt,
                    "--out", tmp_path)
    assert code == 2 and one_line_error(err, "is a directory"), err


@pytest.mark.parametrize("option, value", [("--limit", -5), ("--batch-size", -2), ("--worst", -1)])
def test_negative_counts_are_refused(shards, model_ckpt, capsys, option, value):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--checkpoint", str(model_ckpt), "--data", str(shards), option, str(value)])
    assert e.value.code == 2 and "must be 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize("in_the_way", ["temp file", "file"])
def test_a_failed_write_leaves_the_previous_results_as_they_were(tmp_path, in_the_way):
    old = {tmp_path / "eval.json": b"old 1", tmp_path / "worst.json": b"old 2"}
    for path, data in old.items():
        path.write_bytes(data)
    # The third file cannot be written: a directory sits where it or its temp file goes.
    third = tmp_path / "per_class.csv"
    (third if in_the_way == "file" else
     tmp_path / f"{third.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}").mkdir()
    with pytest.raises(EvalError, match=r"per_class\.csv: cannot write"):
        write_outputs({**{path: b"new" for path in old}, third: b"new"})
    assert {p: p.read_bytes() for p in old} == old
    assert [p.name for p in tmp_path.iterdir() if TMP_MARK in p.name and p.is_file()] == []


def damaged(shards: Path, tmp_path: Path, name: str, data: bytes) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    (copy / name).write_bytes(data)
    return copy


@pytest.mark.parametrize("name, data, words", [
    ("manifest.json", b'{"format_version": 1, "classes": [', ["manifest.json", "not a readable manifest"]),
    ("stats.npz", b"PK\x03\x04 cut short", ["stats.npz", "not the file the build wrote"]),
])
def test_damaged_shard_files_are_one_line_errors(shards, model_ckpt, tmp_path, capsys, name, data, words):
    copy = damaged(shards, tmp_path, name, data)
    code, err = run(capsys, "eval", "--checkpoint", model_ckpt, "--data", copy, "--device", "cpu")
    assert code == 2 and one_line_error(err, *words), err


def test_a_bad_sample_read_by_a_worker_is_one_line_naming_it(shards, model_ckpt, tmp_path, capsys):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    val = json.loads((copy / "manifest.json").read_text())["splits"]["val"]["shards"][0]["name"]
    data = bytearray((copy / val).read_bytes())
    at = data.index(b"\xff\xd8\xff")               # the first JPEG's start of image
    data[at:at + 3] = b"XXX"
    (copy / val).write_bytes(bytes(data))
    code, err = run(capsys, "eval", "--checkpoint", model_ckpt, "--data", copy, "--device", "cpu",
                    "--workers", "2")
    assert code == 2 and one_line_error(err, val, "cannot decode its JPEG"), err


def test_a_checkpoint_whose_weights_do_not_fit_its_config(shards, model_ckpt, tmp_path, capsys):
    state = torch.load(model_ckpt, weights_only=False)
    state["config"]["model"]["groups"] = 1        # conv2/4/5 would be twice as wide
    torch.save(state, tmp_path / "edited.pt")
    state["config"] = "not a config"
    torch.save(state, tmp_path / "text.pt")
    code, err = run(capsys, "eval", "--checkpoint", tmp_path / "edited.pt", "--data", shards,
                    "--device", "cpu")
    assert code == 2 and one_line_error(err, "edited.pt", "weights do not fit"), err
    code, err = run(capsys, "eval", "--checkpoint", tmp_path / "text.pt", "--data", shards,
                    "--device", "cpu")
    assert code == 2 and "text.pt" in err and "not a mapping" in err, err


def test_figures_refuse_a_checkpoint_before_writing_anything(shards, tmp_path, capsys):
    other = make_checkpoint(tmp_path / "five.pt", "model.num_classes=5")
    run_dir = tmp_path / "run"
    (run_dir / "figures").mkdir(parents=True)
    (run_dir / "figures" / "filters.png").write_bytes(b"earlier figure")
    code, err = run(capsys, "figures", run_dir, "--data", shards, "--checkpoint", other,
                    "--device", "cpu")
    assert code == 2 and one_line_error(err, "model.num_classes = 5"), err
    assert (run_dir / "figures" / "filters.png").read_bytes() == b"earlier figure"
    code, err = run(capsys, "figures", tmp_path / "no_such_run", "--device", "cpu")
    assert code == 2 and not (tmp_path / "no_such_run").exists()


def test_report_without_checkpoints_reports_the_metrics_it_has(shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(load_config(SMOKE).to_yaml())
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"event": "data", "path": str(shards)}) + "\n"
        + json.dumps({"event": "val", "epoch": 1, "top1_err": 80.0, "top5_err": 30.0, "n": 6}) + "\n")
    code, err = run(capsys, "report", run_dir)
    assert code == 0 and "no eval" in err and "no best.pt or last.pt" in err, err
    assert (run_dir / "report.md").is_file()
    code, err = run(capsys, "report", run_dir, "--data", shards)     # an eval asked for
    assert code == 2 and one_line_error(err, "no best.pt or last.pt"), err
