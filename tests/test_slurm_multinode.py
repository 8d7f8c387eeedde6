"""slurm/*.sbatch on a real two-node Slurm: each node its own host (network namespace,
hostname and /etc/hosts: tests/node_network.py), the file system shared, as on a cluster.

- train.sbatch --nodes=2 (2 tasks a node, 4 gloo ranks on CPU) is stopped twice mid-run,
  first by SIGTERM to its batch shell (as a preemption warns it), then by the time-limit
  warning's SIGUSR1; it checkpoints, requeues itself each time, and ends with the weights,
  bit for bit, of an uninterrupted torchrun run of the same world size. MAX_REQUEUES=1
  lets it through: only the time-limit requeue counts.
- build_shards.sbatch as an array whose tasks run on both nodes writes the bytes of the
  single-process build.

Needs root, Debian's slurm-wlm + munge and iproute2 (tools/setup_slurm.sh, run by
`make test`); skips with the reason where the cluster or the namespaces cannot be made.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from repro.checkpoint import load
from repro.tracking import read_metrics
from run_helpers import ROOT, SMOKE, assert_same_weights, final_weights, metrics_so_far
from slurm_cluster import MultiNodeCluster, SlurmUnavailable, started_or_skip
from slurm_jobs import SLURM, TRAIN, job_env, torchrun, wait_both

NODES = ["node1", "node2"]
WORLD = 4                       # 2 nodes x 2 tasks


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    c = started_or_skip(MultiNodeCluster(tmp_path_factory.mktemp("slurm2"), nodes=len(NODES)))
    yield c
    c.stop()


def trained_in_attempt(run: Path, attempt: int, global_step: int) -> bool:
    """Whether attempt `attempt` (0 = the first) of the job has logged step `global_step`."""
    records = metrics_so_far(run)
    starts = [i for i, r in enumerate(records) if r["event"] == "start"]
    return len(starts) > attempt and any(r["event"] == "train" and r["global_step"] >= global_step
                                         for r in records[starts[attempt]:])


def stop_mid_training(cluster, job: str, run: Path, log: Path, sig: str, attempt: int,
                      global_step: int) -> None:
    """Once attempt `attempt` of the job has logged step `global_step` (the first of an
    epoch), hold its step (SIGSTOP), send `sig` to the batch shell, and let the step go on
    once the shell has forwarded it: so the signal always lands mid-epoch, however fast
    the machine is."""
    deadline = time.time() + 240
    while not (trained_in_attempt(run, attempt, global_step)
               and (step := cluster.running_step(job))):
        assert time.time() < deadline, (cluster.job(job), log.read_text())
        time.sleep(0.2)
    cluster.run(["scancel", "--signal=STOP", step])
    cluster.run(["scancel", f"--signal={sig}", "--batch", job])
    while f"got SIG{sig}: asking the training tasks" not in log.read_text():
        assert time.time() < deadline, log.read_text()
        time.sleep(0.2)
    cluster.run(["scancel", "--signal=CONT", step])


@pytest.fixture(scope="module")
def two_node_run(two_nodes, shards, tmp_path_factory):
    cluster = two_nodes
    base = tmp_path_factory.mktemp("train2")
    run, ref, logs = base / "run", base / "reference", base / "logs"
    logs.mkdir()
    overrides = [*TRAIN, "schedule.epochs=2", "logging.wandb=disabled"]
    t0 = time.time()
    job = cluster.sbatch(f"--nodes={len(NODES)}", "--cpus-per-task=1",
                         f"--output={logs}/%x-%j.out", SLURM / "train.sbatch", *overrides,
                         env=job_env(DATA=shards, RUN_DIR=run, CONFIG=SMOKE, MAX_REQUEUES=1),
                         cwd=ROOT)
    reference = torchrun(WORLD, shards, ref, overrides)
    log = logs / f"alexnet-train-{job}.out"
    # 3 steps an epoch: stopped in epoch 1 (step 2), resumed, stopped in epoch 2 (step 5).
    stop_mid_training(cluster, job, run, log, "TERM", attempt=0, global_step=1)
    stop_mid_training(cluster, job, run, log, "USR1", attempt=1, global_step=4)
    info = wait_both(cluster, job, reference, timeout=400)
    print(f"two-node train.sbatch job {job}: {info['JobState']} after {info['Restarts']} "
          f"requeues, {time.time() - t0:.0f} s")
    return {"job": job, "info": info, "run": run, "ref": ref, "log": log.read_text()}


def hosts_of_tasks(log: str) -> dict[int, str]:
    """Task -> node, from srun's "srun: error: node2: tasks 2-3: Exited with exit code 75"."""
    hosts = {}
    for node, tasks in re.findall(r"srun: error: (\S+): tasks? ([\d,-]+): Exited", log):
        for part in tasks.split(","):
            first, _, last = part.partition("-")
            hosts.update(dict.fromkeys(range(int(first), int(last or first) + 1), node))
    return hosts


@pytest.mark.slurm
def test_two_node_training_equals_torchrun_of_the_same_world_size(two_node_run):
    info, log, run = two_node_run["info"], two_node_run["log"], two_node_run["run"]
    assert info["JobState"] == "COMPLETED" and info["NumNodes"] == "2", log
    assert f"on node[1-2]: {WORLD} tasks, rendezvous node1:" in log
    # srun names the host of each stopped task: ranks 0-1 on node1, 2-3 on node2.
    assert hosts_of_tasks(log) == {0: "node1", 1: "node1", 2: "node2", 3: "node2"}, log
    state = load(run / "checkpoints" / "last.pt")
    assert state["stream"]["world"] == WORLD and state["epoch"] == 2
    assert_same_weights(final_weights(run), final_weights(two_node_run["ref"]))


@pytest.mark.slurm
def test_sigterm_then_usr1_requeue_and_resume_exactly(two_node_run):
    """SIGTERM to the batch shell (trapped: forwarded, checkpoint, requeue, not counted),
    then the time-limit warning (counted: 1 of MAX_REQUEUES=1), then the end."""
    job, info, log, run = (two_node_run[k] for k in ("job", "info", "log", "run"))
    assert info["Restarts"] == "2", log
    assert log.index("got SIGTERM: asking") < log.index("got SIGUSR1: asking"), log
    assert f"requeueing job {job} (restart 1; sigterm; time-limit requeues 0 of at most 1)" in log
    assert f"requeueing job {job} (restart 2; time-limit; time-limit requeues 1 of at most 1)" in log
    assert log.count("checkpoint written at epoch") == 2 and "training finished" in log
    assert [line.split()[:5] for line in (run / "slurm_requeues.txt").read_text().splitlines()] \
        == [["job", job, "restart", "1", "sigterm"], ["job", job, "restart", "2", "time-limit"]]
    metrics = read_metrics(run)
    stops = [r for r in metrics if r["event"] == "preempted"]
    assert len(stops) == 2 and all(r["wrote"] and r["status"] == 75 for r in stops)
    assert [r["event"] for r in metrics].count("resume") == 2 and metrics[-1]["event"] == "done"


@pytest.mark.slurm
def test_build_array_over_both_nodes_equals_single_process_build(two_nodes, tmp_path):
    """Three array tasks, each given a whole node (its 2 CPUs): two run at once, one on
    each node, the third after; the last to finish merges."""
    from data_prep.make_fixture import make_fixture
    from data_prep_helpers import build, manifest, output_digest

    src, single, arrayed, logs = (tmp_path / n for n in ("src", "single", "array", "logs"))
    logs.mkdir()
    make_fixture(src, "official", classes=5, train_per_class=6, val_per_class=2, quirks=True)
    build(src, single, shard_size=4, workers=1)
    cluster = two_nodes
    job = cluster.sbatch("--array=0-2", f"--cpus-per-task={cluster.cpus}",
                         f"--output={logs}/%x-%A_%a.out",
                         SLURM / "build_shards.sbatch",
                         env=job_env(SOURCE=src, OUT=arrayed, WORKERS=1,
                                     BUILD_ARGS="--shard-size 4"), cwd=ROOT)
    tasks = cluster.wait(job, timeout=180)
    text = "\n".join(p.read_text() for p in sorted(logs.glob("*.out")))
    assert [t["JobState"] for t in tasks] == ["COMPLETED"] * 3, text
    assert {t["BatchHost"] for t in tasks} == set(NODES), tasks
    assert text.count("every shard is finished; merging") == 1, text
    assert output_digest(arrayed) == output_digest(single)      # shards and stats.npz, bytes
    assert manifest(arrayed) == manifest(single)
    assert sorted(p.name for p in arrayed.iterdir()) == sorted(p.name for p in single.iterdir())


@pytest.mark.slurm
def test_a_failed_start_leaves_nothing_behind(tmp_path):
    """Each node is its own host (hostname, address, /etc/hosts); and a cluster whose
    slurmd fails to start stops the daemons it did start (munged, slurmctld, for real)
    and removes the namespaces, veths and bridge, as every stop does."""
    c = MultiNodeCluster(tmp_path, nodes=2)
    seen = {}

    def slurmd_fails():
        seen["procs"] = dict(c.procs)
        seen["node2"] = subprocess.run(c.net.enter("node2", ["sh", "-c", "hostname; getent hosts "
                                                             "node1 node2"]),
                                       capture_output=True, text=True).stdout.split()
        raise RuntimeError("slurmd does not start (on purpose)")

    c.start_slurmds = slurmd_fails
    try:
        with c:
            pass
    except SlurmUnavailable as e:
        pytest.skip(f"cannot start a two-node test Slurm: {e}")
    except RuntimeError as e:
        assert "on purpose" in str(e)
    assert seen["node2"] == ["node2", c.net.addr("node1"), "node1", c.net.addr("node2"), "node2"]
    assert set(seen["procs"]) == {"munged", "slurmctld"}
    assert all(p.poll() is not None for p in seen["procs"].values())
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout + \
        subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    made = [*c.net.netns.values(), c.net.bridge, *c.net.veth.values()]
    assert not [name for name in made if name in left], left
