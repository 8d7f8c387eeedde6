"""repro report: the run's numbers beside the paper's, and exactly the settings that differ."""
import json

import pytest

from repro.cli import main
from repro.config import load_config
from repro.evaluate import evaluate
from repro.report import ANCHORS, PAPER_CONFIG, differences
from run_helpers import CLASSES, SMOKE, make_checkpoint
from shard_helpers import write_shards

CHANGED = {"model.num_classes": (CLASSES, 1000), "data.crop_size": (68, 227), "optim.lr": (0.02, 0.01),
           "model.lrn": ("none", "paper"), "logging.wandb": ("disabled", "online")}
SHARDS = dict(classes=CLASSES, train=8, val=12, shard_size=6)


@pytest.fixture
def report_run(tmp_path, shards):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = load_config(PAPER_CONFIG, [f"{k}={a}" for k, (a, _) in CHANGED.items()])
    (run / "config.yaml").write_text(cfg.to_yaml())
    classes = json.loads((shards / "manifest.json").read_text())["classes"]
    make_checkpoint(run / "checkpoints" / "best.pt", classes=classes)
    val = [(1, 70.0, 20.0), (2, 55.5, 10.25), (3, 61.0, 12.0)]   # best top-1: epoch 2
    lines = [{"event": "start"}] + [
        {"event": "val", "epoch": e, "global_step": 5 * e, "top1_err": t1, "top5_err": t5, "n": 12}
        for e, t1, t5 in val]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run


def test_differences_are_exactly_the_changed_keys():
    run = load_config(PAPER_CONFIG, [f"{k}={a}" for k, (a, _) in CHANGED.items()])
    assert {k: (a, b) for k, a, b in differences(run, load_config(PAPER_CONFIG))} == CHANGED


def test_report_table_and_settings(report_run, shards, capsys):
    assert main(["report", str(report_run), "--data", str(shards), "--device", "cpu"]) == 0
    text = (report_run / "report.md").read_text()
    assert capsys.readouterr().out == text
    s = evaluate([report_run / "checkpoints" / "best.pt"], shards, ten_crop=True, device="cpu").summary()
    rows = [line for line in text.splitlines() if line.startswith("| this run")]
    assert rows[0] == (f"| this run: 1 CNN (checkpoints/best.pt), 10 crops, 12 val images | "
                       f"{s['top1_err']:.2f} | {s['top5_err']:.2f} | repro eval |")
    assert rows[1].endswith("(after epoch 2, 12 images) | 55.50 | 10.25 | metrics.jsonl |")
    assert "| paper: 1 CNN, 10 crops | 40.7 | 18.2 | paper Table 2 |" in text
    assert "| paper: 5 CNNs averaged, 10 crops | 38.1 | 16.4 | paper Table 2 |" in text
    # Table 2's starred rows and test column, Table 1 (ILSVRC-2010 test), as printed there
    assert "| paper: 1 CNN*, 10 crops | 39.0 | 16.6 | paper Table 2 |" in text
    assert "| paper: 7 CNNs* averaged (two CNNs* with the five CNNs) | 36.7 | 15.4 | paper Table 2 |" in text
    assert "| paper: 7 CNNs* averaged, ILSVRC-2012 test | — | 15.3 | paper Table 2 |" in text
    assert "| SIFT + FVs (Sánchez & Perronnin), ILSVRC-2012 test | — | 26.2 | paper Table 2 |" in text
    assert "| paper: 1 CNN, ILSVRC-2010 test | 37.5 | 17.0 | paper Table 1 |" in text
    assert "| Sparse coding (Berg et al.), ILSVRC-2010 test | 47.1 | 28.2 | paper Table 1 |" in text
    assert "| SIFT + FVs (Sánchez & Perronnin), ILSVRC-2010 test | 45.7 | 25.7 | paper Table 1 |" in text
    assert sum(line.startswith("| ") for line in text.splitlines()) == 2 + 2 + len(ANCHORS)
    listed = text.split("## Settings that differ from the paper")[1]
    bullets = [line for line in listed.splitlines() if line.startswith("- ")]
    assert sorted(bullets) == sorted(f"- {k}: {a!r} vs {b!r}" for k, (a, b) in CHANGED.items())
    assert "3 of 90 epochs, 15 steps" in text and f"chance is {100 - 100 / CLASSES:.1f}% top-1" in text


def test_report_without_data_or_run(report_run, tmp_path, capsys):
    out = tmp_path / "r.md"
    assert main(["report", str(report_run), "--out", str(out)]) == 0
    text = out.read_text()
    assert "repro eval |" not in text and "--data SHARDS" in text
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "nowhere/metrics.jsonl: missing" in capsys.readouterr().err


def fake_run(path, overrides, top1, top5):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(load_config(PAPER_CONFIG, overrides).to_yaml())
    rows = [{"event": "val", "epoch": 1, "top1_err": top1 + 3, "top5_err": top5 + 3, "n": 9},
            {"event": "val", "epoch": 2, "top1_err": top1, "top5_err": top5, "n": 9}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ablation_runs_beside_the_claims(tmp_path, capsys):
    small = ["model.num_classes=10", "schedule.epochs=5"]    # same data and schedule for all
    base = fake_run(tmp_path / "base", small, 40.0, 18.0)
    no_lrn = fake_run(tmp_path / "a", small + ["model.lrn=none"], 41.5, 19.0)
    pools = fake_run(tmp_path / "b", small + ["model.pool_kernel=2"], 40.25, 18.5)
    other = fake_run(tmp_path / "c", small + ["optim.lr=0.02"], 39.0, 17.0)
    assert main(["report", str(base), "--ablations", str(no_lrn), str(pools), str(other)]) == 0
    text = (base / "report.md").read_text()
    assert "| no_lrn | 41.50 | 19.00 | +1.50 | +1.00 | +1.40 | +1.20 |" in text
    assert "| no_overlap_pool | 40.25 | 18.50 | +0.25 | +0.50 | +0.40 | +0.30 |" in text
    assert "| c | 39.00 | 17.00 | -1.00 | -1.00 | — | — |" in text    # not an ablation
    # the baseline by its config, not as "paper config": the settings that define the run
    assert ("| base (baseline run): paper config with model.num_classes=10, schedule.epochs=5 | "
            "40.00 | 18.00 | | | | | |") in text
    smoke = fake_run(tmp_path / "smoke", [], 80.0, 50.0)
    (smoke / "config.yaml").write_text(load_config(SMOKE).to_yaml())
    assert main(["report", str(smoke), "--ablations", str(no_lrn)]) == 0
    row = next(line for line in (smoke / "report.md").read_text().splitlines()
               if "(baseline run)" in line)
    assert row.startswith("| smoke (baseline run): paper config with model.num_classes=10, "
                          "optim.lr=0.0005, schedule.kind='constant', schedule.epochs=3, and 2 "
                          "more | 80.00 | 50.00 |"), row


def test_a_test_split_run_is_reported_as_such(report_run, tmp_path, capsys):
    """An ILSVRC-2010-style shard set has labelled test images (Table 1): `repro report
    --split test` evaluates them and says so in its row."""
    shards = write_shards(tmp_path / "s", classes=CLASSES, train=8, val=6, test=7, shard_size=6)
    assert main(["report", str(report_run), "--data", str(shards), "--split", "test",
                 "--device", "cpu", "--centre"]) == 0
    text = (report_run / "report.md").read_text()
    assert "| this run: 1 CNN (checkpoints/best.pt), centre crop, 7 test images |" in text
