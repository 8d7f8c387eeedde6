"""The loader's workers alone (CPU decode path; nothing on a device): images/s of one
epoch of random crops by worker count, the best of 3 epochs after worker start-up.
With 1 worker the loader runs in this process, so its CPU time per image is printed
too: that figure barely moves when other work shares the machine.

    python tools/loader_bench.py SHARD_DIR 1 2 [4 ...]

Run it against another checkout with PYTHONPATH=that/checkout to compare versions.
"""
import sys
import time

import torch

from repro.data.loader import loader
from repro.data.order import EpochPlan
from repro.data.shards import split_shards


def main(shard_dir: str, worker_counts: list[int]) -> None:
    torch.set_num_threads(1)        # as in a DataLoader worker
    shards = tuple(split_shards(shard_dir, "train"))
    for workers in worker_counts:
        best, cpu = 0.0, float("inf")
        for epoch in range(3):
            plan = EpochPlan(shards=shards, epoch=epoch, seed=0, rank=0, world=1, batch_size=128,
                             workers=workers, crop="random", crop_size=227, flip=True,
                             shuffle=True, shuffle_buffer=512)
            batches = iter(loader(plan))
            next(batches), next(batches)                 # workers started, queues primed
            n, t, c = 0, time.perf_counter(), time.process_time()
            for _, labels, *_ in batches:
                n += len(labels)
            best = max(best, n / (time.perf_counter() - t))
            cpu = min(cpu, (time.process_time() - c) / n)
        note = f", {cpu * 1e6:.0f} us CPU per image" if workers == 1 else ""
        print(f"workers {workers}: {best:.0f} img/s ({best / workers:.0f} per worker{note})",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(w) for w in sys.argv[2:]] or [1])
