"""repro/data/loader.py: batches from worker processes, prefetched to the device, and
workers that outlive a job's SIGTERM but not their parent."""
import subprocess
import sys

import pytest
import torch

from repro.data.loader import device_loader, loader, prefetch
from run_helpers import ROOT
from shard_helpers import plan


@pytest.mark.parametrize("workers", [1, 2])
def test_crops_arrive_channels_last(train_split, workers):
    """Workers write each crop as the decoder lays out pixels (H,W,3): the batch is
    channels_last memory, also after crossing from a worker process."""
    for b in loader(plan(train_split, workers=workers, batch_size=4)):
        images = b.images
        assert images.shape == (4, 3, 227, 227) or len(images) < 4
        assert images.is_contiguous(memory_format=torch.channels_last)


def tensors(b) -> list[torch.Tensor]:
    return [b.images, b.labels, *b.crops[:3]]


def test_prefetch_passes_batches_through_off_cuda(train_split):
    p = plan(train_split, workers=2, batch_size=6)
    direct = [[t.clone() for t in tensors(b)] for b in loader(p)]
    fetched = list(prefetch(loader(p), torch.device("cpu")))
    assert len(fetched) == len(direct) == p.num_batches
    assert all(torch.equal(a, b) for x, y in zip(direct, fetched) for a, b in zip(x, tensors(y)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("decode", ["cpu", "gpu", "hybrid"])
def test_prefetch_to_cuda_gives_the_same_batches(train_split, decode):
    """The side-stream copies arrive whole while the caller keeps the GPU busy."""
    cuda = torch.device("cuda")
    p = plan(train_split, workers=2, batch_size=6, decode=decode, gpu_share=0.5)
    direct = [b.device_images(cuda).cpu() for b in loader(p)]
    busy = torch.randn(2048, 2048, device=cuda)
    for expect, b in zip(direct, device_loader(p, cuda)):
        busy = busy @ busy / 2048                  # work queued ahead of each batch's use
        assert b.labels.is_cuda and b.crops.ys.is_cuda
        assert torch.equal(b.device_images(cuda).cpu(), expect)


STOP_SCRIPT = r"""
import os, signal, subprocess, sys, time, torch
from repro.data.loader import StopSafeDataLoader

class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        while True:
            yield torch.zeros(1)
            time.sleep(0.01)

batches = iter(StopSafeDataLoader(Stream(), batch_size=None, num_workers=2))
if sys.argv[1] == "group":          # SLURM's SIGTERM to every process: the workers live on,
    # even those still starting (no batch taken yet)
    subprocess.run(["kill", "-s", "TERM", "--", f"-{os.getpgrp()}"])   # not from the parent
    time.sleep(0.5)
    for _ in range(20):
        next(batches)
    print("served after SIGTERM", flush=True)
else:                               # the trainer fails: its exit must still end the workers
    next(batches)
    raise RuntimeError("the trainer failed")
"""


@pytest.mark.parametrize("case", ["group", "crash"])
def test_loader_workers_outlive_the_jobs_sigterm_but_not_their_parents_exit(case):
    # the script's own process group: its killpg reaches it and its workers, not pytest
    code = ("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + STOP_SCRIPT
            if case == "group" else STOP_SCRIPT)
    done = subprocess.run([sys.executable, "-c", code, case], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, start_new_session=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    if case == "group":
        assert done.returncode == 0 and "served after SIGTERM" in done.stdout, done.stderr[-2000:]
    else:
        assert done.returncode == 1 and "the trainer failed" in done.stderr
