"""Process-group setup from torchrun's or SLURM's environment variables
(the torchvision references' init_distributed_mode, reduced to what we use)."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from repro.exits import ReproError


class DeviceError(ReproError, RuntimeError):
    pass


def pick_device(kind: str, local_rank: int = 0) -> torch.device:
    """kind auto | cpu | cuda: auto takes this rank's GPU when there is one."""
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device cuda was asked for, but no CUDA device is available")
    if kind != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclass(frozen=True)
class DistContext:
    """This process's place among the training processes (one process: the defaults)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_kind: str) -> DistContext:
    """device_kind 'cuda' -> NCCL, one GPU per local rank; 'cpu' -> gloo."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:           # torchrun, or srun with env:// set up
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", 0))
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:  # srun tasks
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local = int(env.get("SLURM_LOCALID", 0))
        env.setdefault("MASTER_PORT", "29500")
        if "MASTER_ADDR" not in env:
            raise RuntimeError("SLURM launch with several tasks needs MASTER_ADDR "
                               "(slurm/train.sbatch exports it from the first node's name)")
    else:
        return DistContext()
    if world == 1:
        return DistContext()
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    tdist.init_process_group("nccl" if device_kind == "cuda" else "gloo", rank=rank,
                            world_size=world, timeout=datetime.timedelta(minutes=30))
    return DistContext(rank, world, local)


def all_sum(values: list[float], dist: DistContext, device: torch.device) -> list[float]:
    if dist.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, dist: DistContext, device: torch.device) -> bool:
    """Whether `flag` is set on any rank: a decision every rank takes together."""
    return bool(all_sum([float(flag)], dist, device)[0])


def shutdown(dist: DistContext) -> None:
    if dist.world > 1 and tdist.is_initialized():
        tdist.destroy_process_group()
