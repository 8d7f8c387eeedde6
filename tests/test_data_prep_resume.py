"""Killing the build at any moment and running it again gives the uninterrupted build's bytes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from data_prep.atomic import TMP_MARK
from data_prep_helpers import ROOT, build, cli, fixture, manifest, output_digest

ARGS = ["--shard-size", "2", "--workers", "2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    fixture(root / "src", "official", train_per_class=16, val_per_class=4)
    build(root / "src", root / "ref", shard_size=2, workers=2)
    return root / "src", root / "ref"


def _start(src, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "data_prep.build_shards", "--source", str(src), "--out", str(out),
                             *ARGS], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> None:
    """SIGKILL the build's main process (not its workers: they must die with it) once ready()."""
    end = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < end:
        time.sleep(0.005)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _assert_no_half_files(out, ref):
    """Whatever a killed build left under a final name is complete and correct."""
    for p in out.glob("*.tar"):
        assert p.read_bytes() == (ref / p.name).read_bytes(), p.name


def test_sigkill_mid_build_then_rerun_is_byte_identical(reference, tmp_path):
    src, ref = reference
    out = tmp_path / "out"
    # first kill: as soon as a shard exists; second: mid-way through the rest
    _kill_when(_start(src, out), lambda: any(out.glob("train-*.tar")))
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    _assert_no_half_files(out, ref)
    n_first = len(list(out.glob("*.tar")))
    _kill_when(_start(src, out), lambda: len(list(out.glob("*.tar"))) >= n_first + 3)
    _assert_no_half_files(out, ref)
    r = cli("data_prep.build_shards", "--source", str(src), "--out", str(out), *ARGS)
    assert r.returncode == 0, r.stderr
    assert "resuming:" in r.stdout
    assert output_digest(out) == output_digest(ref)
    assert manifest(out) == manifest(ref)
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name]
    assert not (out / ".build").exists()


def test_sigterm_says_how_to_resume_and_the_rerun_finishes(reference, tmp_path):
    src, ref = reference
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "data_prep.build_shards", "--source", str(src),
                             "--out", str(out), *ARGS], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    end = time.time() + 60
    while not any(out.glob("train-*.tar")) and proc.poll() is None and time.time() < end:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGTERM)      # as scancel signals the job step: workers too
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    _assert_no_half_files(out, ref)
    r = cli("data_prep.build_shards", "--source", str(src), "--out", str(out), *ARGS)
    assert r.returncode == 0, r.stderr
    assert output_digest(out) == output_digest(ref)


def test_kill_at_arbitrary_moments(reference, tmp_path):
    src, ref = reference
    out = tmp_path / "out"
    for delay in (0.45, 0.6, 0.75, 0.9):  # python starts in ~0.4 s; the build then takes ~1 s
        t = time.time()
        _kill_when(_start(src, out), lambda: time.time() - t > delay)
        _assert_no_half_files(out, ref)
        if (out / "manifest.json").exists():
            break
    r = cli("data_prep.build_shards", "--source", str(src), "--out", str(out), *ARGS)
    assert r.returncode == 0, r.stderr
    assert output_digest(out) == output_digest(ref)


def test_stale_temporary_files_are_cleared(reference, tmp_path):
    src, ref = reference
    out = tmp_path / "out"
    (out / ".build" / "parts").mkdir(parents=True)
    # what a run killed mid-write leaves: half a shard and half a sidecar under temporary names
    (out / f"train-000000.tar{TMP_MARK}999999").write_bytes(b"half a shard")
    (out / ".build" / "parts" / f"train-000000.tar.json{TMP_MARK}999999").write_bytes(b"{")
    build(src, out, shard_size=2, workers=1)
    assert output_digest(out) == output_digest(ref)
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name]
