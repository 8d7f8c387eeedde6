"""tools/gpu_session.py rehearsed on the CPU: every part of the GPU session runs here with
tiny sizes and the same command lines (the CUDA tests collected, not run), so that a broken
command or a missing file shows up here and not on the lent GPU's clock."""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from repro.bench import parser as bench_parser, variant_config
from repro.cifar.nets import NETS
from repro.config import load_config
from repro.fashion_mnist import write_idx

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_session.py"
PARTS = ["preflight", "gpu-tests", "shards", "bench", "d2l", "cifar", "learnability"]
spec = importlib.util.spec_from_file_location("gpu_session", SCRIPT)
session = sys.modules["gpu_session"] = importlib.util.module_from_spec(spec)   # dataclasses look it up
spec.loader.exec_module(session)


def stash(path: Path) -> Path:
    """A stash as --prepare leaves it, less the wheels (webdataset is installed here): the
    real Fashion-MNIST where Debian's package is, else a small stand-in in its format."""
    folder = path / "fashion-mnist"
    folder.mkdir(parents=True)
    for name in session.FASHION_FILES:
        real = session.FASHION_MNIST / name
        if real.is_file():
            shutil.copyfile(real, folder / name)
        else:
            n = 100 if name.startswith("train") else 20
            rng = np.random.default_rng(len(name))
            array = rng.integers(0, 256, (n, 28, 28)) if "images" in name else np.arange(n) % 10
            write_idx(folder / name[:-3], array)
            (folder / name).write_bytes(gzip.compress((folder / name[:-3]).read_bytes()))
            (folder / name[:-3]).unlink()
    return path


def rehearse(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--work", str(tmp_path / "work"),
                           str(tmp_path / "out"), *args], capture_output=True, text=True, timeout=900)


def results(tmp_path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    return {row["part"]: row for row in rows}


@pytest.mark.slow
def test_the_rehearsal_runs_every_part_and_records_each(tmp_path):
    done = rehearse(tmp_path, "--stash", str(stash(tmp_path / "stash")))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = results(tmp_path)
    assert sorted(rows, key=PARTS.index) == PARTS
    assert {p: r["status"] for p, r in rows.items()} == {
        **{p: "ok" for p in PARTS}, "gpu-tests": "skipped"}
    assert rows["gpu-tests"]["reason"] == "no CUDA device: collected only"
    assert rows["gpu-tests"]["result"]["collected"] > 0
    # the table closes the output and is summary.txt; each part has a line in it
    table = (tmp_path / "out" / "summary.txt").read_text()
    assert done.stdout.endswith(table)
    assert [line.split()[0] for line in table.splitlines() if not line.startswith(" ")] == ["part", *PARTS]

    with tarfile.open(tmp_path / "out" / "parts.tar") as tar:
        names = tar.getnames()
        assert {f"{p}/log.txt" for p in PARTS[1:]} <= set(names)
        assert not [n for n in names if n.endswith(".pt")]              # no checkpoints
        bench = json.load(tar.extractfile("bench/bench.json"))
        with_lrn = [json.loads(line) for line in tar.extractfile("cifar/lrn/with/metrics.jsonl")]

    # bench: both steps, end to end, 10-crop and baseline, each as measured
    got = {(r["stage"][0], r["variant"]): r["images_per_s"] for r in rows["bench"]["result"]["results"]}
    assert set(got) == {("a", "fp32"), ("a", session.FAST), ("c", session.FAST),
                        ("d", session.FAST), ("e", "fp32 eager, PIL")}
    assert got == {(r["stage"][0], r["variant"]): r["images_per_s"] for r in bench["results"]}
    hours = 1_281_167 * 90 / got["a", "fp32"] / 3600
    assert any(f"{hours:6.1f} h" in line for line in rows["bench"]["summary"])

    d2l = rows["d2l"]["result"]
    assert d2l["epochs"] == 1 and d2l["finished"] and 0 <= d2l["test_acc"] <= 1

    # cifar: hours = the 11pct file's 520 epochs a net x the last epoch's time for 50,000 images
    cifar = rows["cifar"]["result"]
    epoch = [r for r in with_lrn if r["event"] == "val"][-1]
    assert cifar["seconds_per_epoch"]["with"] == pytest.approx(50_000 / epoch["train_images_per_s"])
    assert cifar["epochs_needed"]["with"] == sum(NETS["11pct"].schedule) == 520
    assert cifar["hours"]["lrn"] == pytest.approx(
        520 * (cifar["seconds_per_epoch"]["with"] + cifar["seconds_per_epoch"]["without"]) / 3600)
    assert len(rows["learnability"]["result"]["val_top1_err"]) == 1


@pytest.mark.slow
def test_a_part_that_breaks_is_marked_failed_and_the_next_one_runs(tmp_path):
    """Fashion-MNIST's training images replaced by a valid gzip of no idx file: the d2l
    run exits with an error; the learnability run after it still runs; the session exits 1."""
    broken = stash(tmp_path / "stash")
    (broken / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not idx"))
    done = rehearse(tmp_path, "--stash", str(broken), "--parts", "d2l,learnability")
    assert done.returncode == 1, done.stdout + done.stderr
    rows = results(tmp_path)
    assert {p: r["status"] for p, r in rows.items()} == {
        "preflight": "ok", "shards": "ok", "d2l": "failed", "learnability": "ok"}
    assert rows["d2l"]["reason"].startswith("exit ")
    assert "d2l           failed" in done.stdout


def test_preflight_names_what_is_missing_and_starts_no_part(tmp_path):
    (tmp_path / "empty").mkdir()
    done = rehearse(tmp_path, "--stash", str(tmp_path / "empty"))
    assert done.returncode == 2
    rows = results(tmp_path)
    assert list(rows) == ["preflight"] and rows["preflight"]["status"] == "failed"
    missing = rows["preflight"]["result"]["missing"]
    assert sorted(missing) == sorted(f"fashion-mnist/{n}" for n in session.FASHION_FILES)
    assert all("--prepare" in why for why in missing.values())
    assert not (tmp_path / "out" / "parts.tar").exists()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in "ZX"


def test_a_command_past_its_time_limit_is_ended_with_its_children(tmp_path):
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(p.pid, flush=True); time.sleep(60)")
    with open(tmp_path / "log", "w") as log:
        t = time.monotonic()
        assert session.run_command([sys.executable, "-c", code], log, 3, dict(os.environ)) is None
    assert time.monotonic() - t < 20
    child = int((tmp_path / "log").read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child)


def test_the_fast_bench_variant_is_configs_alexnet_fast():
    cfg, fast = variant_config(session.FAST, bench_parser().parse_args([])), load_config("alexnet_fast")
    assert cfg.train == fast.train and cfg.model == fast.model
