"""slurm/*.sbatch on a real single-node Slurm (tests/slurm_cluster.py): the shard-build
array against the single-process build, DDP training that is signalled before its time
limit, checkpoints, requeues itself and ends with the weights of an uninterrupted run in
one W&B run, the requeue guard, and the 10-crop eval + report.

The tests marked slurm need root and Debian's slurm-wlm + munge (tools/setup_slurm.sh,
run by `make test`) and skip with the reason otherwise; the parts test before them runs
build_shards --part in plain processes. Two CPU ranks (gloo) stand in for the two GPUs: the
node advertises gpu:2 backed by fake device files, and DEVICE=cpu is passed to the scripts.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from repro.checkpoint import FORMAT_VERSION, load
from repro.tracking import read_metrics
from run_helpers import ROOT, SMOKE, assert_same_weights, final_weights, metrics_so_far
from slurm_cluster import SlurmCluster, started_or_skip
from slurm_jobs import SLURM, TRAIN, job_env, torchrun, wait_both, wait_for

EPOCHS = 4
MAX_REQUEUES = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = started_or_skip(SlurmCluster(tmp_path_factory.mktemp("slurm")))
    yield c
    c.stop()


def log_of(logs: Path, name: str, job: str) -> str:
    return (logs / f"{name}-{job}.out").read_text()


# ---- build_shards.sbatch: an array against the single-process build ---------------------
def shard_index(name: str) -> int:
    return int(name.split("-")[1][:6])


def _build_part(src, out, part, parts, q):
    from data_prep.build_shards import build_shards

    lines = []
    build_shards(src, out, shard_size=4, workers=1, part=part, parts=parts, log=lines.append)
    q.put("\n".join(lines))


def test_parts_side_by_side_equal_single_process_build(tmp_path):
    """No Slurm needed: build_shards --part I --parts 3 in 3 processes at once."""
    import multiprocessing as mp

    from data_prep.make_fixture import make_fixture
    from data_prep_helpers import build, manifest, output_digest

    src = tmp_path / "src"
    make_fixture(src, "folder", classes=5, train_per_class=6, val_per_class=2, quirks=True)
    build(src, tmp_path / "single", shard_size=4, workers=1)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_build_part, args=(src, tmp_path / "parts", i, 3, q))
             for i in range(3)]
    for p in procs:
        p.start()
    logs = "\n".join(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join()
        assert p.exitcode == 0, logs
    assert logs.count("every shard is finished; merging") == 1, logs
    assert output_digest(tmp_path / "parts") == output_digest(tmp_path / "single")
    assert manifest(tmp_path / "parts") == manifest(tmp_path / "single")
    assert not (tmp_path / "parts" / ".build").exists()


@pytest.mark.slurm
def test_build_array_equals_single_process_build(cluster, tmp_path):
    """The fixture (official layout, with ImageNet's odd files) cut into shards of 4, built by
    3 array tasks: first tasks 0 and 2 only (as if task 1 had failed: no manifest yet), then
    the whole array again, which builds only part 1's shards; its last task merges."""
    from data_prep.make_fixture import make_fixture
    from data_prep_helpers import build, manifest, output_digest

    src, single, arrayed, logs = (tmp_path / n for n in ("src", "single", "array", "logs"))
    logs.mkdir()
    make_fixture(src, "official", classes=5, train_per_class=6, val_per_class=2, quirks=True)
    build(src, single, shard_size=4, workers=1)
    shards = sorted(p.name for p in single.glob("*.tar"))
    assert len(shards) >= 9

    def submit(array: str) -> tuple[list[dict], str]:
        job = cluster.sbatch(f"--array={array}", "--cpus-per-task=1",
                             f"--output={logs}/%x-%A_%a.out", SLURM / "build_shards.sbatch",
                             env=job_env(SOURCE=src, OUT=arrayed, PARTS=3,
                                         BUILD_ARGS="--shard-size 4"), cwd=ROOT)
        tasks = cluster.wait(job, timeout=120)
        text = "\n".join(p.read_text() for p in sorted(logs.glob(f"*-{job}_*.out")))
        assert [t["JobState"] for t in tasks] == ["COMPLETED"] * len(tasks), text
        return tasks, text

    tasks, text = submit("0,2")
    assert len(tasks) == 2 and not (arrayed / "manifest.json").exists(), text
    assert "the last part to finish writes manifest.json" in text
    first = {n: (arrayed / n).stat().st_mtime_ns for n in shards if shard_index(n) % 3 != 1}
    assert sorted(p.name for p in arrayed.glob("*.tar")) == sorted(first)

    tasks, text = submit("0-2")
    assert len(tasks) == 3 and text.count("every shard is finished; merging") == 1, text
    assert {n: (arrayed / n).stat().st_mtime_ns for n in first} == first   # not rebuilt
    assert output_digest(arrayed) == output_digest(single)      # shards and stats.npz, bytes
    a, b = np.load(arrayed / "stats.npz"), np.load(single / "stats.npz")
    assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert manifest(arrayed) == manifest(single)                # settings included
    assert sorted(p.name for p in arrayed.iterdir()) == sorted(p.name for p in single.iterdir())


# ---- train.sbatch: time limit -> USR1 -> checkpoint -> requeue -> exact resume -----------
@pytest.fixture(scope="module")
def requeued(cluster, shards, tmp_path_factory):
    """A train.sbatch job with --signal=B:USR1@105 whose time limit is cut only once its
    training is under way: it starts with 10 minutes (the warning is 8 minutes off, however
    slowly a loaded machine starts it); at its first logged step the training is held
    (SIGSTOP to its step) and the limit set to the whole minute 60-120 s ahead, so that the
    warning is due within 15 s and the trainer has over 60 s to checkpoint; once the
    warning has reached the batch shell, the training goes on and the limit is 10 minutes
    again, for the requeued run. Meanwhile, an uninterrupted torchrun run of the same
    config (world size 2)."""
    base = tmp_path_factory.mktemp("train")
    run, ref, logs = base / "run", base / "reference", base / "logs"
    logs.mkdir()
    overrides = [*TRAIN, f"schedule.epochs={EPOCHS}"]
    t0 = time.time()
    job = cluster.sbatch("--time=10", "--signal=B:USR1@105", "--cpus-per-task=1",
                         f"--output={logs}/%x-%j.out", SLURM / "train.sbatch", *overrides,
                         env=job_env(DATA=shards, RUN_DIR=run, CONFIG=SMOKE,
                                     MAX_REQUEUES=MAX_REQUEUES), cwd=ROOT)
    reference = torchrun(2, shards, ref, overrides)
    log = logs / f"alexnet-train-{job}.out"
    wait_for(lambda: any(r["event"] == "train" for r in metrics_so_far(run)), 300, cluster, job)
    cluster.run(["scancel", "--signal=STOP", f"{job}.0"])          # hold the training
    held = time.time()
    ran = seconds(cluster.job(job)[0]["RunTime"])
    cluster.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={ran // 60 + 2}"])
    wait_for(lambda: "got SIGUSR1" in log.read_text(), 90, cluster, job)   # Slurm's warning
    cluster.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"])
    cluster.run(["scancel", "--signal=CONT", f"{job}.0"])
    warned = time.time()
    info = wait_both(cluster, job, reference, timeout=300)
    print(f"train.sbatch job {job}: warned {warned - held:.0f} s after the hold, "
          f"{info['JobState']} after {info['Restarts']} requeues, {time.time() - t0:.0f} s")
    return {"job": job, "info": info, "run": run, "ref": ref, "log": log.read_text()}


def seconds(run_time: str) -> int:
    """Slurm's [D-]HH:MM:SS as seconds."""
    days, _, hms = run_time.rpartition("-")
    h, m, sec = map(int, hms.split(":"))
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + sec


@pytest.mark.slurm
def test_time_limit_signal_requeues_and_resumes_exactly(requeued):
    info, run, log = requeued["info"], requeued["run"], requeued["log"]
    assert info["JobState"] == "COMPLETED", log
    restarts = int(info["Restarts"])
    assert restarts >= 1, log                                   # the time limit warned it
    assert "got SIGUSR1: asking the training tasks to checkpoint and stop" in log
    assert (f"requeueing job {requeued['job']} (restart 1; time-limit; time-limit requeues 1 "
            f"of at most {MAX_REQUEUES})") in log
    assert log.count("] job ") == restarts + 1                  # one header per attempt
    assert "training finished" in log
    metrics = read_metrics(run)
    events = [r["event"] for r in metrics]
    assert "preempted" in events and "resume" in events and events[-1] == "done"
    starts = [r for r in metrics if r["event"] == "start"]
    assert {r["slurm_job_id"] for r in starts} == {requeued["job"]}
    counts = [r["restart_count"] for r in starts]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == restarts
    assert_same_weights(final_weights(run), final_weights(requeued["ref"]))


@pytest.mark.slurm
def test_requeued_job_logs_into_one_wandb_run(requeued):
    run = requeued["run"]
    run_id = (run / "wandb_id.txt").read_text().strip()
    ids = [r["id"] for r in read_metrics(run) if r["event"] == "wandb"]
    assert len(ids) == int(requeued["info"]["Restarts"]) + 1 and set(ids) == {run_id}
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == len(ids)                              # one per attempt ...
    assert {f.name.rsplit("-", 1)[1] for f in folders} == {run_id}   # ... all the same run
    assert all((f / f"run-{run_id}.wandb").is_file() for f in folders)


# ---- the guard, through the batch-shell signal the time-limit warning uses ----------------
@pytest.mark.slurm
def test_guard_stops_at_max_requeues_and_resubmit_resumes(cluster, shards, tmp_path):
    """`scancel --signal=USR1 --batch` is what --signal=B:USR1@N does; with MAX_REQUEUES=0
    the job checkpoints and stops (status 75) instead of requeueing; the same command
    submitted again finishes the run."""
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    args = ("--cpus-per-task=1", f"--output={logs}/%x-%j.out", SLURM / "train.sbatch",
            *TRAIN, "schedule.epochs=2", "logging.wandb=disabled")
    env = job_env(DATA=shards, RUN_DIR=run, CONFIG=SMOKE, MAX_REQUEUES=0)
    job = cluster.sbatch(*args, env=env, cwd=ROOT)
    wait_for(lambda: any(r["event"] == "train" for r in metrics_so_far(run)), 120, cluster, job)
    cluster.run(["scancel", "--signal=USR1", "--batch", job])
    (info,) = cluster.wait(job, timeout=120)
    log = log_of(logs, "alexnet-train", job)
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("FAILED", "75:0", "0"), log
    assert "after 0 time-limit requeues = MAX_REQUEUES; not requeueing" in log
    state = load(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step"]) < (2, 0)
    assert "preempted" in [r["event"] for r in metrics_so_far(run)]

    again = cluster.sbatch(*args, env={**env, "MAX_REQUEUES": "3"}, cwd=ROOT)
    (info,) = cluster.wait(again, timeout=120)
    log = log_of(logs, "alexnet-train", again)
    assert info["JobState"] == "COMPLETED", log
    assert f"resuming {run}/checkpoints/last.pt at epoch 1 step " in log
    assert load(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert metrics_so_far(run)[-1]["event"] == "done"


@pytest.mark.slurm
def test_scancel_still_cancels_the_job(cluster, shards, tmp_path):
    """The batch shell traps SIGTERM to checkpoint and requeue (a preemption), but a plain
    `scancel` must still end the job: its SIGTERM finds the job COMPLETING, and the
    shell does not requeue it (`scontrol requeue` would bring a cancelled job back)."""
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    job = cluster.sbatch("--cpus-per-task=1", f"--output={logs}/%x-%j.out",
                         SLURM / "train.sbatch", *TRAIN, "logging.wandb=disabled",
                         env=job_env(DATA=shards, RUN_DIR=run, CONFIG=SMOKE), cwd=ROOT)
    wait_for(lambda: any(r["event"] == "train" for r in metrics_so_far(run)), 120, cluster, job)
    cluster.run(["scancel", job])
    log = logs / f"alexnet-train-{job}.out"
    wait_for(lambda: "not requeueing" in log.read_text(), 60, cluster, job)
    time.sleep(2)                    # a requeue, had there been one, would show by now
    info = cluster.wait(job, timeout=60)[0]
    text = log.read_text()
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0"), text
    assert re.search(r"after SIGTERM, and Slurm is ending the job \(JobState=(COMPLETING|"
                     r"CANCELLED)\): not requeueing", text) and "requeueing job" not in text, text


# ---- eval.sbatch ---------------------------------------------------------------------------
@pytest.mark.slurm
def test_eval_sbatch_writes_ten_crop_eval_and_report(cluster, shards, requeued, tmp_path):
    run = requeued["run"]
    job = cluster.sbatch("--cpus-per-task=1", f"--output={tmp_path}/%x-%j.out",
                         SLURM / "eval.sbatch", env=job_env(RUN_DIR=run, DATA=shards), cwd=ROOT)
    (info,) = cluster.wait(job, timeout=180)
    log = log_of(tmp_path, "alexnet-eval", job)
    assert info["JobState"] == "COMPLETED", log
    summary = json.loads((run / "eval" / "eval.json").read_text())
    assert summary["crops"] == 10 and summary["n"] == 12
    assert Path(summary["checkpoints"][0]).parent == run / "checkpoints"
    assert (run / "eval" / "per_class.csv").is_file()
    report = (run / "report.md").read_text()
    assert "10 crops, 12 val images" in report
    assert f"{summary['top1_err']:.2f}" in report and "paper: 1 CNN, 10 crops" in report
    assert report in log


@pytest.mark.slurm
def test_eval_sbatch_ensemble_without_run_dir_writes_its_own_dir(cluster, shards, tmp_path):
    """The header's ensemble example as given (CHECKPOINTS, no RUN_DIR), submitted from a
    directory whose runs/alexnet-train (the default RUN_DIR) must stay untouched."""
    from repro.config import load_config, model_kwargs
    from repro.model import build_model

    ckpts = []
    for seed in (0, 1):
        cfg = load_config(SMOKE, TRAIN + [f"model.seed={seed}"])
        ckpts.append(tmp_path / f"m{seed}.pt")
        torch.save({"model": build_model(model_kwargs(cfg)).state_dict(),
                    "config": cfg.to_dict(), "format_version": FORMAT_VERSION}, ckpts[-1])
    run = tmp_path / "runs" / "alexnet-train"
    (run / "eval").mkdir(parents=True)
    for f in (run / "eval" / "eval.json", run / "report.md"):
        f.write_text("the run's own\n")
    job = cluster.sbatch("--cpus-per-task=1", f"--output={tmp_path}/%x-%j.out",
                         SLURM / "eval.sbatch", cwd=tmp_path,
                         env=job_env(DATA=shards, CHECKPOINTS=" ".join(map(str, ckpts))))
    (info,) = cluster.wait(job, timeout=180)
    log = log_of(tmp_path, "alexnet-eval", job)
    assert info["JobState"] == "COMPLETED", log
    summary = json.loads((tmp_path / "runs" / f"eval-{job}" / "eval.json").read_text())
    assert summary["checkpoints"] == [str(c) for c in ckpts] and summary["crops"] == 10
    assert "no RUN_DIR: no report written" in log
    assert sorted(p.name for p in run.rglob("*")) == ["eval", "eval.json", "report.md"]
    assert {f.read_text() for f in (run / "eval" / "eval.json", run / "report.md")} == \
        {"the run's own\n"}


@pytest.mark.slurm
@pytest.mark.parametrize("script, env, args, says", [
    ("train.sbatch", {"MAX_REQUEUES": "three"}, [], "MAX_REQUEUES must be a whole number"),
    ("train.sbatch", {}, ["--array=0"], "trains one run per job"),
    ("eval.sbatch", {"PYTHON": "/bin/false-python"}, [], "no checkpoint to evaluate"),
    ("eval.sbatch", {}, [], "error: "),
])
def test_wrong_job_inputs_fail_at_once_with_the_reason(cluster, shards, tmp_path, script, env,
                                                       args, says):
    """Bad settings end the job with status 2 and the reason in its log (Python's own error
    for eval's checkpoint lookup), instead of requeueing or hiding it."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)        # a run with no checkpoint yet
    job = cluster.sbatch("--cpus-per-task=1", f"--output={tmp_path}/out-%j.out", *args,
                         SLURM / script, env=job_env(**{"RUN_DIR": run, "DATA": shards, **env}),
                         cwd=ROOT)
    job = job.split("_")[0]
    (info, *_) = cluster.wait(job, timeout=120)
    log = "".join(p.read_text() for p in tmp_path.glob("out-*.out"))
    assert info["JobState"] == "FAILED" and info["ExitCode"].startswith("2:"), log
    assert says in log, log
    if script == "eval.sbatch" and "PYTHON" not in env:
        assert "no best.pt or last.pt" in log       # the lookup's own message
