"""Progress off a terminal (a Slurm log, a pipe): data_prep.progress's lines, and every long
command printing them: build_shards, verify, eval, report, figures."""
import os
import re
import subprocess
import sys
import time

import pytest

from data_prep.progress import Progress, duration
from data_prep_helpers import ROOT, fixture
from repro.cli import main
from repro.config import load_config
from shard_helpers import write_shards
from run_helpers import make_checkpoint

LINE = re.compile(r"^(?P<desc>[^:]+): (?P<n>\d+)/(?P<total>\d+) img \((?P<pct>\d+)%\), "
                  r"(?P<rate>[\d.]+) img/s, ETA (?P<eta>\S+)$")


def test_lines_at_each_tenth_then_a_summary(capsys):
    with Progress(50, "shards", "img", "lines", every_pct=10, every_s=1e9, min_gap_s=0) as bar:
        for _ in range(50):
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    found = [LINE.match(line) for line in lines[:-1]]
    assert all(found), lines
    assert [int(m["n"]) for m in found] == [5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert [int(m["pct"]) for m in found] == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert {m["total"] for m in found} == {"50"}
    assert re.fullmatch(r"shards: 50 img in \d+s \([\d.]+ img/s\)", lines[-1]), lines[-1]


def test_a_line_every_so_many_seconds_and_none_for_a_quick_loop(capsys):
    with Progress(10, "eval", "img", "lines", every_pct=100, every_s=0.2, min_gap_s=0) as bar:
        bar.update(2)                   # no line: the first 0.2 s have not passed
        time.sleep(0.25)
        bar.update(2)                   # 4 of 10 in ~0.25 s: ~16 img/s, ~0.4 s to go
    lines = capsys.readouterr().err.splitlines()
    m = LINE.match(lines[0])
    assert len(lines) == 2 and m and m["n"] == "4" and m["pct"] == "40", lines
    assert 8 < float(m["rate"]) < 17 and m["eta"] == "0s"
    with Progress(1000, "quick", "img", "lines") as bar:    # default: no two lines within 1 s
        for _ in range(1000):
            bar.update(1)
    (only,) = capsys.readouterr().err.splitlines()
    assert only.startswith("quick: 1000 img in ")


def test_off_prints_nothing_and_an_error_prints_no_summary(capsys):
    with Progress(3, "x", "img", "off") as bar:
        bar.update(3)
    with pytest.raises(KeyError), Progress(3, "y", "img", "lines") as bar:
        bar.update(1)
        raise KeyError("boom")
    assert capsys.readouterr().err == ""


def test_duration():
    assert [duration(s) for s in (0.4, 59.6, 61, 3599, 3600 * 3 + 65)] == [
        "0s", "1m00s", "1m01s", "59m59s", "3h01m"]


def test_build_shards_under_slurm_prints_lines_not_a_bar(tmp_path):
    src = tmp_path / "src"
    fixture(src, "folder", quirks=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SLURM_JOB_ID": "123"}
    r = subprocess.run([sys.executable, "-m", "data_prep.build_shards", "--source", str(src),
                        "--out", str(tmp_path / "out"), "--workers", "1", "--shard-size", "8"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^shards: 40 img in \d+s", r.stderr, re.M), r.stderr   # 5 x (6 + 2)
    assert "\r" not in r.stderr and "it/s]" not in r.stderr                    # no tqdm bar
    v = subprocess.run([sys.executable, "-m", "data_prep.verify", str(tmp_path / "out")],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert v.returncode == 0 and re.search(r"^verify: 6 shards in \d+s", v.stderr, re.M), v.stderr


def test_eval_report_and_figures_print_progress_off_a_terminal(tmp_path, capsys):
    shards = write_shards(tmp_path / "s", classes=7, train=9, val=12, shard_size=5)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = make_checkpoint(run / "checkpoints" / "best.pt", shards=shards)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(shards), "--json"]) == 0
    assert re.search(r"^eval \(1 crop\): 12 img in \d+s", capsys.readouterr().err, re.M)
    (run / "metrics.jsonl").write_text('{"event": "start"}\n')
    (run / "config.yaml").write_text(load_config(ROOT / "configs" / "smoke.yaml").to_yaml())
    assert main(["report", str(run), "--data", str(shards)]) == 0
    assert re.search(r"^eval \(10 crops\): 12 img in \d+s", capsys.readouterr().err, re.M)
    assert main(["figures", str(run), "--data", str(shards), "--scan", "9"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^neighbours: training images searched: 9 img in \d+s", err, re.M), err
