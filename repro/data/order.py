"""Which samples each rank and loader worker reads, in which order, with which crops.

The exact-once contract, for any number of DDP ranks and loader workers:

- Each epoch the shards are put in a seeded order and read as one sequence of N
  samples. Rank r owns the contiguous slice [N*r/W, N*(r+1)/W) (sizes differ by at most
  one), cut into batches of the per-rank batch size; every batch is full except the
  rank's last. So every sample is trained on exactly once an epoch.
- Loader workers own contiguous runs of those batches, and torch's DataLoader returns
  them round-robin, so the order is a function of (seed, epoch, world size, workers)
  alone.
- Each worker passes its samples through a seeded webdataset shuffle buffer, draws
  every sample's crop from its own seeded RNG (repro.augment.draw_crop), and only then
  skips what a resumed run has already trained on, so a resume replays exactly the
  same stream, crops included.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import numpy as np
import webdataset as wds

from data_prep.image import IMAGE_SIZE
from data_prep.manifest import ShardsError
from data_prep.shardfile import read_samples
from repro.augment import draw_crop
from repro.data.shards import Shard


def even_range(n: int, parts: int, i: int) -> tuple[int, int]:
    return n * i // parts, n * (i + 1) // parts


def segments(shards: list[Shard], start: int, stop: int) -> list[tuple[str, int, int]]:
    """The pieces (path, first, last+1) of shards that cover sequence positions [start, stop)."""
    out, offset = [], 0
    for shard in shards:
        lo, hi = max(start, offset), min(stop, offset + shard.count)
        if lo < hi:
            out.append((shard.path, lo - offset, hi - offset))
        offset += shard.count
    return out


def worker_batch_counts(num_batches: int, workers: int) -> list[int]:
    return [even_range(num_batches, workers, w)[1] - even_range(num_batches, workers, w)[0]
            for w in range(workers)]


def round_robin(counts: list[int], done: int) -> tuple[list[int], int]:
    """The DataLoader cycles over its workers, passing over exhausted ones. After it has
    yielded `done` batches: how many came from each worker, and which worker is next."""
    taken, w = [0] * len(counts), 0
    done = min(done, sum(counts))   # a short rank may have one batch fewer than `steps`
    while done > 0:
        if taken[w] < counts[w]:
            taken[w] += 1
            done -= 1
        w = (w + 1) % len(counts)
    while sum(taken) < sum(counts) and taken[w] == counts[w]:
        w = (w + 1) % len(counts)
    return taken, w


@dataclass(frozen=True)
class EpochPlan:
    """What one rank reads in one epoch, and how."""
    shards: tuple[Shard, ...]
    epoch: int
    seed: int
    rank: int
    world: int
    batch_size: int          # per rank
    workers: int             # >= 1 logical streams (DataLoader workers, or 1 in-process)
    crop: str                # random | center | none (repro.augment.draw_crop)
    crop_size: int
    flip: bool
    shuffle: bool
    shuffle_buffer: int
    skip_batches: int = 0    # batches this rank already trained on (resume)
    limit: int = 0           # 0 = every sample; else the first `limit` of the sequence
    decode: str = "cpu"      # cpu: workers decode and crop; gpu: workers pass the JPEG bytes;
    gpu_share: float = 0.0   # hybrid: this share of each batch as bytes, the rest as crops

    def __post_init__(self):
        if self.decode not in ("cpu", "gpu", "hybrid") or not 0 <= self.gpu_share <= 1:
            raise ValueError(f"decode {self.decode!r} with gpu_share {self.gpu_share}: decode is "
                             f"cpu, gpu or hybrid, gpu_share in [0, 1]")

    @property
    def image_size(self) -> int:
        """The side of the images the plan's batches hold: the crop, or the whole image."""
        return self.crop_size if self.crop != "none" else IMAGE_SIZE

    def ordered_shards(self) -> list[Shard]:
        shards = list(self.shards)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(shards))
            shards = [shards[i] for i in order]
        return shards

    @property
    def total(self) -> int:
        n = sum(s.count for s in self.shards)
        return min(n, self.limit) if self.limit else n

    def rank_range(self, rank: int | None = None) -> tuple[int, int]:
        return even_range(self.total, self.world, self.rank if rank is None else rank)

    @property
    def num_batches(self) -> int:
        lo, hi = self.rank_range()
        return -(-(hi - lo) // self.batch_size)

    @property
    def steps(self) -> int:
        """Batches per rank per epoch, the same on every rank: slices differ by at most one
        sample, so a rank with one fewer ends on a batch one smaller (or an empty one)."""
        largest = -(-self.total // self.world)
        return -(-largest // self.batch_size)

    def global_batch_size(self, step: int) -> int:
        """Images in batch `step` over all ranks (the mean of the loss is over these)."""
        def on(rank):
            lo, hi = self.rank_range(rank)
            return max(0, min(self.batch_size, hi - lo - step * self.batch_size))
        return sum(on(r) for r in range(self.world))

    def worker_stream(self, w: int):
        """Worker w's samples: (JPEG bytes, label, crop y, crop x, flipped, where) tuples;
        `where` names the shard and key for error messages."""
        lo, hi = self.rank_range()
        counts = worker_batch_counts(self.num_batches, self.workers)
        first_batch = sum(counts[:w])
        start = lo + first_batch * self.batch_size
        stop = min(hi, start + counts[w] * self.batch_size)
        pieces = segments(self.ordered_shards(), start, stop)
        samples = itertools.chain.from_iterable(
            read_samples(path, a, b) for path, a, b in pieces)
        stream_seed = [self.seed, self.epoch, self.rank, w]
        if self.shuffle and self.shuffle_buffer > 1:
            samples = wds.filters.shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer,
                                          rng=random.Random(str(stream_seed)))(samples)
        rng = np.random.default_rng(stream_seed)
        # Drawn for every sample, skipped or not, so that a resume sees the same draws.
        samples = ((s, draw_crop(rng, self.crop, self.crop_size, self.flip)) for s in samples)
        skip = round_robin(counts, self.skip_batches)[0][w] * self.batch_size
        for sample, (y, x, flipped) in itertools.islice(samples, skip, None):
            where = f"{sample['__url__']}: sample {sample['__key__']}"
            try:
                jpeg, label = sample["jpg"], int(sample["cls"])
            except (KeyError, ValueError):
                raise ShardsError(f"{where} has no jpg or no integer cls "
                                 f"(it has {sorted(k for k in sample if k[0] != '_')})") from None
            yield jpeg, label, y, x, flipped, where


def in_order(shards: list[Shard], batch_size: int, workers: int, limit: int = 0,
             rank: int = 0, world: int = 1, decode: str = "cpu",
             gpu_share: float = 0.0) -> EpochPlan:
    """Each sample once, whole (256x256), in shard order, none mirrored: for validation,
    evaluation and figures, which cut their views with repro.augment.Normalizer.eval_input."""
    return EpochPlan(shards=tuple(shards), epoch=0, seed=0, rank=rank, world=world,
                     batch_size=batch_size, workers=workers, crop="none", crop_size=IMAGE_SIZE,
                     flip=False, shuffle=False, shuffle_buffer=0, limit=limit, decode=decode,
                     gpu_share=gpu_share)
