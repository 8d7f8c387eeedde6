"""The loader's workers alone (CPU decode path; nothing on a device): images/s of one
epoch of random crops by worker count, the best of 3 epochs after worker start-up.

    python tools/loader_bench.py SHARD_DIR 1 2 [4 ...]

Run it against another checkout with PYTHONPATH=that/checkout to compare versions.
"""
import sys
import time

from repro.data import EpochPlan, loader, split_shards


def main(shard_dir: str, worker_counts: list[int]) -> None:
    shards = tuple(split_shards(shard_dir, "train"))
    for workers in worker_counts:
        best = 0.0
        for epoch in range(3):
            plan = EpochPlan(shards=shards, epoch=epoch, seed=0, rank=0, world=1, batch_size=128,
                             workers=workers, crop="random", crop_size=227, flip=True,
                             shuffle=True, shuffle_buffer=512)
            batches = iter(loader(plan))
            next(batches), next(batches)                 # workers started, queues primed
            n, t = 0, time.perf_counter()
            for _, labels, *_ in batches:
                n += len(labels)
            best = max(best, n / (time.perf_counter() - t))
        print(f"workers {workers}: {best:.0f} img/s ({best / workers:.0f} per worker)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(w) for w in sys.argv[2:]] or [1])
