"""metrics.jsonl, the runs' records: a damaged line is reported once, with its file and
number, and skipped; it costs neither a report nor a training run."""
import json

from repro import d2l, fashion_mnist
from repro.config import load_config
from repro.tracking import read_metrics
from run_helpers import D2L_CONFIG, D2L_TINY
from stops import StopAfter


def test_a_damaged_line_is_skipped_and_named_once(tmp_path, capsys):
    records = [{"event": "start"}, {"event": "train", "loss": 1.0}, {"event": "val", "top1_err": 5.0}]
    lines = [json.dumps(r) for r in records]
    lines.insert(2, '{"event": "train", "lo')                  # a line cut short mid-file
    lines.insert(1, "[1, 2]")                                  # JSON, but no record
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"event": "tor')
    assert [r["event"] for r in read_metrics(tmp_path)] == ["start", "train", "val"]
    err = capsys.readouterr().err
    assert err == f"warning: {tmp_path / 'metrics.jsonl'}: lines 2, 4 are not a JSON record; skipped\n"
    read_metrics(tmp_path)
    assert capsys.readouterr().err == ""                       # once a file


def test_a_run_with_a_damaged_record_resumes_and_finishes(tmp_path, capsys):
    fashion_mnist.generate(tmp_path / "data", 24, 8, seed=0)
    cfg = load_config(D2L_CONFIG, D2L_TINY + ["schedule.epochs=2"])
    run = tmp_path / "run"
    assert d2l.run(cfg, tmp_path / "data", run, stop=StopAfter(4)) == 75
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert d2l.run(cfg, tmp_path / "data", run) == 0
    assert "line 2 is not a JSON record; skipped" in capsys.readouterr().err
    assert sum(r["event"] == "val" for r in read_metrics(run)) == 2
    assert d2l.run(cfg, tmp_path / "data", run) == 0           # finished: asked again, 0
    assert "already finished" in capsys.readouterr().out
