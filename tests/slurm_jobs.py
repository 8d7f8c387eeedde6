"""The project's jobs on the test Slurm (tests/slurm_cluster.py): the environment they are
submitted with, the smoke settings they train with, waiting on them, and the uninterrupted
torchrun run whose weights a stopped and requeued job must end with."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from run_helpers import ROOT, SMALL_RUN, SMOKE
from slurm_cluster import free_port

SLURM = ROOT / "slurm"
# The smoke config at 67 px with every training image used (run_helpers.SMALL_RUN).
TRAIN = [*SMALL_RUN, "logging.wandb=offline"]


def job_env(**kw) -> dict:
    """Two CPU ranks (gloo) stand in for the two GPUs: DEVICE=cpu, one thread each."""
    return {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true",
            "DEVICE": "cpu", **{k: str(v) for k, v in kw.items()}}


def torchrun(world: int, shards: Path, out: Path, overrides: list[str]) -> subprocess.Popen:
    """The uninterrupted reference: `repro train` under torchrun, `world` CPU ranks here."""
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}",
         f"--master-port={free_port()}", "-m", "repro.cli", "train", "--config", str(SMOKE),
         "--data", str(shards), "--out", str(out), *overrides, "train.device=cpu"],
        cwd=ROOT, env={**os.environ, **job_env()}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


def wait_both(cluster, job: str, reference: subprocess.Popen, timeout: float) -> dict:
    """The job's end (its `scontrol show job`), and the reference's, which must succeed."""
    (info,) = cluster.wait(job, timeout=timeout)
    out = reference.communicate(timeout=timeout)[0]
    assert reference.returncode == 0, out
    return info


def wait_for(condition, timeout: float, cluster, job) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, cluster.job(job)
        time.sleep(0.2)
