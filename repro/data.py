"""Streaming the WebDataset shards: exact-once epochs across DDP ranks and loader workers.

Each epoch the shards are put in a seeded order and read as one sequence of N
samples. Rank r owns the contiguous slice [N*r/W, N*(r+1)/W) (sizes differ by
at most one), cut into batches of the per-rank batch size; every batch is full
except the rank's last. Loader workers own contiguous runs of those batches,
and torch's DataLoader returns them round-robin, so the order is a function of
(seed, epoch, world size, workers) alone. Each worker passes its samples
through a seeded webdataset shuffle buffer, draws every sample's crop and flip
from its own seeded RNG, and only then skips what a resumed run has already
trained on, so a resume replays exactly the same stream. Workers read the
shards with data_prep.shardfile's tar reader, then decode and cut the crop (CPU
path: libjpeg-turbo via torchvision) or pass the JPEG bytes on (GPU decode path:
nvJPEG); the mirror and the per-pixel float work happen on the device
(device_images, repro.augment).
"""
from __future__ import annotations

import itertools
import os
import random
import re
import signal
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import webdataset as wds
from torchvision.io import ImageReadMode, decode_jpeg

from data_prep.image import SIZE
from data_prep.manifest import MANIFEST, ShardsError, load_manifest
from data_prep.shardfile import read_samples
from repro.augment import crop_windows


@dataclass(frozen=True)
class Shard:
    path: str
    count: int


def read_manifest(shards_dir: str | Path) -> dict:
    path = Path(shards_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest.json; build shards with "
                                f"`python -m data_prep.build_shards --source ... --out {shards_dir}`")
    return load_manifest(shards_dir)


def split_shards(shards_dir: str | Path, split: str) -> list[Shard]:
    manifest = read_manifest(shards_dir)
    if split not in manifest["splits"]:
        raise FileNotFoundError(f"{Path(shards_dir) / 'manifest.json'}: no '{split}' split "
                                f"(built with --splits {','.join(manifest['splits'])})")
    entries = manifest["splits"][split]["shards"]
    if not entries:
        raise ShardsError(f"{Path(shards_dir) / MANIFEST}: lists no {split} shards")
    return [Shard(str(Path(shards_dir) / e["name"]), int(e["count"])) for e in entries]


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
    crop: str                # random | center | none
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

    def rank_range(self) -> tuple[int, int]:
        return even_range(self.total, self.world, self.rank)

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
        samples = ((s, self._window(rng)) for s in samples)
        skip = round_robin(counts, self.skip_batches)[0][w] * self.batch_size
        for sample, (y, x, flipped) in itertools.islice(samples, skip, None):
            where = f"{sample['__url__']}: sample {sample['__key__']}"
            try:
                jpeg, label = sample["jpg"], int(sample["cls"])
            except (KeyError, ValueError):
                raise ShardsError(f"{where} has no jpg or no integer cls "
                                 f"(it has {sorted(k for k in sample if k[0] != '_')})") from None
            yield jpeg, label, y, x, flipped, where

    def _window(self, rng: np.random.Generator) -> tuple[int, int, bool]:
        # Drawn for every sample, skipped or not, so that a resume sees the same draws.
        y, x = rng.integers(0, 2 ** 31, size=2)
        flipped = bool(rng.integers(0, 2))
        if self.crop == "random":
            span = STORED - self.crop_size + 1
            return int(y % span), int(x % span), self.flip and flipped
        if self.crop == "center":
            c = (STORED - self.crop_size) // 2
            return c, c, False
        return 0, 0, False


STORED = SIZE  # shard images are 256x256 (data_prep contract); checked on decode


def in_order(shards: list[Shard], batch_size: int, workers: int, crop: str = "none",
             crop_size: int = STORED, limit: int = 0) -> EpochPlan:
    """Each sample once, in shard order, none mirrored: for evaluation and figures."""
    return EpochPlan(shards=tuple(shards), epoch=0, seed=0, rank=0, world=1,
                     batch_size=batch_size, workers=workers, crop=crop, crop_size=crop_size,
                     flip=False, shuffle=False, shuffle_buffer=0, limit=limit)


# torchvision 0.29 deprecates its image decoders for torchcodec (not on our GPU machines),
# and torch warns that the JPEG bytes, which it only reads, are read-only. Filtered once
# here, for those modules only (a catch_warnings per batch would be thread-unsafe and would
# reset which warnings were already shown).
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
warnings.filterwarnings("ignore", message="The given buffer is not writable",
                        module=r"repro\.data")


def decode_one(jpeg, name: str) -> torch.Tensor:
    """One shard JPEG (bytes, or a uint8 tensor on the host) -> uint8 (3,256,256) on the
    host: libjpeg-turbo straight into an RGB view of H,W,3 memory (Pillow's decode and
    conversion to RGB took 1.3x the CPU time: BENCHMARKS, "loader"). ShardsError naming
    the sample if it is not a 256x256 JPEG."""
    try:
        data = jpeg if isinstance(jpeg, torch.Tensor) else torch.frombuffer(jpeg, dtype=torch.uint8)
        pixels = decode_jpeg(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as e:
        raise ShardsError(f"{name}: cannot decode its JPEG ({_torch_message(e)})") from None
    _check_size(pixels, name)
    return pixels


def _check_size(pixels: torch.Tensor, name: str) -> None:
    if pixels.shape[-2:] != (STORED, STORED):
        raise ShardsError(f"{name}: image is {pixels.shape[-1]}x{pixels.shape[-2]}, "
                          f"expected {STORED}x{STORED} (shards not built by data_prep?)")


def _torch_message(e: Exception) -> str:
    """A torch/torchvision C++ error's message without its source location."""
    return re.sub(r"^.*?\.(?:cpp|h):\d+, ", "", str(e).splitlines()[0])


def decode_crops(jpegs: list[bytes], ys, xs, size: int, names: list[str]) -> torch.Tensor:
    """The CPU path: decode each JPEG and copy its size x size window at (y, x) into one
    uint8 batch (B,3,S,S); size 0 keeps the whole image. The batch is laid out
    channels_last (B,S,S,3 in memory, as the decoder writes pixels): one copy per image,
    and the layout the fast model wants. The mirror is left to device_images. `names`
    say where each JPEG came from, for the error if one cannot be decoded."""
    size = size or STORED
    shape = (len(jpegs), size, size, 3)
    if torch.utils.data.get_worker_info() is None:
        batch = torch.empty(shape, dtype=torch.uint8)
    else:   # allocated in shared memory, where it crosses to the main process uncopied
        storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
        batch = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    for out, jpeg, y, x, name in zip(batch.numpy(), jpegs, ys, xs, names):
        out[:] = decode_one(jpeg, name).permute(1, 2, 0)[y:y + size, x:x + size].numpy()
    return batch.permute(0, 3, 1, 2)


class Packed(NamedTuple):
    """The GPU path's JPEG bytes of a batch as one buffer + lengths: one shared-memory
    tensor per batch crosses from the worker, not one per image; `names` say where each
    came from, for errors."""
    buffer: torch.Tensor
    lengths: torch.Tensor
    names: tuple[str, ...]


def pack(jpegs: list[bytes], names) -> Packed:
    return Packed(torch.frombuffer(bytearray().join(jpegs), dtype=torch.uint8),   # one copy
                  torch.tensor([len(j) for j in jpegs]), tuple(names))


class Split(NamedTuple):
    """The hybrid path: the batch's first len(crops) samples decoded and cut by the workers,
    the rest left as JPEG bytes for the GPU, so that both decoders feed one batch."""
    crops: torch.Tensor
    jpegs: Packed


_decode_streams: dict[int, torch.cuda.Stream] = {}


def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _decode_streams:
        _decode_streams[index] = torch.cuda.Stream(index)
    return _decode_streams[index]


def decode_batch(packed: Packed, device: torch.device) -> torch.Tensor:
    """The GPU path: decode a packed batch of JPEGs on `device` (nvJPEG on CUDA)."""
    jpegs = list(torch.split(packed.buffer, packed.lengths.tolist()))
    try:
        if device.type != "cuda":
            images = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
        else:
            # nvJPEG writes its outputs from a stream of its own that does not wait for the
            # stream they were allocated on (pytorch/vision#9606): allocated on the compute
            # stream, they could reuse memory a queued step still reads. So they are
            # allocated on a decode stream with nothing of ours left queued on it.
            stream = _decode_stream(device)
            stream.synchronize()
            with torch.cuda.stream(stream):
                images = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
            current = torch.cuda.current_stream(device)
            current.wait_stream(stream)
            for image in images:
                image.record_stream(current)     # read by the stack below, on this stream
    except RuntimeError:
        for jpeg, name in zip(jpegs, packed.names):    # which one: decoded alone on the host
            decode_one(jpeg, name)
        raise
    for image, name in zip(images, packed.names):
        _check_size(image, name)
    return torch.stack(images)


def cut(images: torch.Tensor, ys, xs, flips, size: int, device: torch.device) -> torch.Tensor:
    """uint8 (B,3,H,W) on `device` -> each sample's size x size window at (y, x), mirrored
    where flipped: one gather, into a channels_last (B,3,S,S) batch."""
    rows, cols = crop_windows(ys, xs, flips, size, device)
    batch = torch.arange(len(images), device=device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def empty_batch(size: int) -> tuple:
    """A batch of no images, shaped like the loader's, for a rank whose slice ran out."""
    long = torch.zeros(0, dtype=torch.long)
    return torch.zeros(0, 3, size, size, dtype=torch.uint8), long, long, long, long


def device_images(images, ys, xs, flips, plan: EpochPlan, device: torch.device) -> torch.Tensor:
    """A loader batch's images on `device` as uint8 (B,3,S,S), cut and mirrored. GPU path:
    decoded and cut here. CPU path: the workers cut the windows and the mirror is done
    here, where it is one gather for the batch (a reversed copy on the host costs about
    as much as a third of a decode). Hybrid: each part its own way, in batch order."""
    size = plan.crop_size if plan.crop != "none" else STORED
    if isinstance(images, Split):
        k = len(images.crops)
        return torch.cat([device_images(part, ys[a:b], xs[a:b], flips[a:b], plan, device)
                          for part, a, b in ((images.crops, 0, k), (images.jpegs, k, len(ys)))])
    if isinstance(images, Packed):
        return cut(decode_batch(images, device), ys, xs, flips, size, device)
    images = images.to(device, non_blocking=True)
    if not (plan.flip and plan.crop == "random"):       # nothing is mirrored (EpochPlan._window)
        return images
    return cut(images, torch.zeros_like(ys), torch.zeros_like(xs), flips, size, device)


def prefetch(batches, device: torch.device):
    """Loader batches with their tensors on `device`. On CUDA the next batch's copies are
    issued on a side stream before the current batch is handed over, so they overlap the
    caller's step, and no blocking copy stalls the host. Packed JPEG bytes stay on the
    host (nvJPEG reads them there). Elsewhere the batches pass through unchanged."""
    if device.type != "cuda":
        yield from batches
        return
    stream, current = torch.cuda.Stream(device), torch.cuda.current_stream(device)

    def to_device(t):
        if isinstance(t, Split):
            return Split(to_device(t.crops), t.jpegs)
        return t if isinstance(t, Packed) else t.to(device, non_blocking=True)

    def send(batch):
        if batch is None:
            return None
        with torch.cuda.stream(stream):
            return tuple(map(to_device, batch))

    batches = iter(batches)
    ahead = send(next(batches, None))
    while ahead is not None:
        current.wait_stream(stream)
        for t in ahead:
            if isinstance(t, Split):
                t = t.crops
            if not isinstance(t, Packed):
                t.record_stream(current)     # made on the side stream, used on this one
        batch, ahead = ahead, send(next(batches, None))
        yield batch


class _WorkerStreams(torch.utils.data.IterableDataset):
    """Yields batches: worker w (of the DataLoader) batches its own stream."""

    def __init__(self, plan: EpochPlan):
        self.plan = plan

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        # A resumed DataLoader starts its cycle at worker 0: rotate the streams so that
        # worker 0 serves the stream whose batch comes next.
        counts = worker_batch_counts(self.plan.num_batches, self.plan.workers)
        first = round_robin(counts, self.plan.skip_batches)[1]
        w = ((info.id if info is not None else 0) + first) % self.plan.workers
        stream = self.plan.worker_stream(w)
        while batch := list(itertools.islice(stream, self.plan.batch_size)):
            jpegs, labels, ys, xs, flips, names = zip(*batch)
            size = self.plan.crop_size if self.plan.crop != "none" else 0
            share = {"cpu": 0.0, "gpu": 1.0}.get(self.plan.decode, self.plan.gpu_share)
            here = len(batch) - round(len(batch) * share)   # decoded here; the rest on the GPU
            if here == 0:
                images = pack(jpegs, names)
            elif here < len(batch):
                images = Split(decode_crops(jpegs[:here], ys[:here], xs[:here], size, names[:here]),
                               pack(jpegs[here:], names[here:]))
            else:
                images = decode_crops(jpegs, ys, xs, size, names)
            yield (images, torch.tensor(labels), torch.tensor(ys), torch.tensor(xs),
                   torch.tensor(flips))


def loader(plan: EpochPlan, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches (images; labels; crop ys; crop xs; flips) in the plan's order. The images
    are uint8 (B,3,S,S) crops not yet mirrored (CPU path), packed JPEG bytes (GPU path)
    or both (hybrid): device_images makes them the plan's crops on the device."""
    workers = plan.workers if plan.workers > 1 else 0  # 1 stream: read in-process
    return _Loader(_WorkerStreams(plan), batch_size=None, num_workers=workers,
                   pin_memory=pin_memory, worker_init_fn=_outlive_stop_signals,
                   prefetch_factor=4 if workers else None)


# SLURM signals every process of a job step (preemption, scancel, the time-limit warning).
# The trainer then checkpoints and exits, which ends its loader workers; a worker killed by
# the signal first would end the trainer without a checkpoint.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR1}


class _Loader(torch.utils.data.DataLoader):
    """Its workers start with the stop signals blocked (a signal mask is inherited), so that
    one arriving while a worker starts waits for _outlive_stop_signals, not kills it."""

    def __iter__(self):
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _outlive_stop_signals(worker_id: int) -> None:
    """A worker ignores SIGUSR1, and SIGTERM from anyone but its parent (the DataLoader and
    Python's exit stop workers with SIGTERM: those still end it)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # SIGTERM: taken by the thread below

    def watch() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="stop-signals").start()


def device_loader(plan: EpochPlan, device: torch.device):
    """The plan's batches as training consumes them: pinned, then prefetched to `device`."""
    return prefetch(loader(plan, pin_memory=device.type == "cuda"), device)
