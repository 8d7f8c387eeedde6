"""repro demo end to end at its smallest size (--fast): fixture -> shards -> train ->
10-crop eval -> report -> figures; and again in the same --out, which skips what is done."""
import json

from repro.cli import main
from repro.demo import SIZES, run_demo
from repro.tracking import read_metrics


def test_demo_end_to_end_then_again(tmp_path, capsys):
    out = tmp_path / "demo"
    first = run_demo(out, device="cpu", fast=True)
    paths = first["paths"]
    fast = SIZES["fast"]
    val_files = len(json.loads((paths["fixture"] / "fixture.json").read_text())["labels"]["val"])
    assert first["summary"]["n"] == val_files and first["summary"]["crops"] == 10
    assert json.loads((out / "eval" / "eval.json").read_text()) == first["summary"]
    report = paths["report"].read_text()
    assert "| this run: 1 CNN (checkpoints/best.pt), 10 crops" in report
    assert "| paper: 1 CNN, 10 crops | 40.7 | 18.2 |" in report
    assert f"- model.num_classes: {fast['classes']} vs 1000" in report
    assert sorted(p.name for p in paths["figures"].iterdir()) == [
        "curves.png", "filters.png", "neighbours.png", "predictions.png"]
    printed = capsys.readouterr().out
    assert "| paper: 5 CNNs averaged, 10 crops | 38.1 | 16.4 |" in printed
    report_stage, figures_stage = printed.split("[5/6] report")[1].split("[6/6] figures")
    assert "| paper: 5 CNNs averaged" in report_stage and "|" not in figures_stage
    assert str(paths["report"]) in printed
    trained = [r for r in read_metrics(paths["run"]) if r["event"] == "train"]
    assert len(trained) == fast["epochs"] * fast["steps_per_epoch"]

    figures = {p.name: p.stat().st_mtime_ns for p in paths["figures"].iterdir()}
    evaluated = (out / "eval" / "eval.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--fast", "--device", "cpu"]) == 0
    again = capsys.readouterr().out
    assert "exists: kept" in again and "nothing to do" in again
    assert f"{out / 'eval' / 'eval.json'} is newer than {paths['checkpoint']}: kept" in again
    assert f"{paths['figures']} is newer than {paths['checkpoint']}: kept" in again
    assert (out / "eval" / "eval.json").stat().st_mtime_ns == evaluated
    assert {p.name: p.stat().st_mtime_ns for p in paths["figures"].iterdir()} == figures
    assert [r for r in read_metrics(paths["run"]) if r["event"] == "train"] == trained
    assert json.loads((out / "eval" / "eval.json").read_text()) == first["summary"]
