"""The DataLoader over an EpochPlan, and its batches on the device.

A batch is (images, labels, crop ys, crop xs, flips). The images are uint8 (B,3,S,S)
crops not yet mirrored (CPU path), packed JPEG bytes (GPU path) or both (hybrid);
`device_images` makes them the plan's crops on the device.
"""
from __future__ import annotations

import itertools

import torch

from repro import augment, preempt
from repro.data.decode import MixedBatch, Packed, decode_batch, decode_crops, pack
from repro.data.order import EpochPlan, round_robin, worker_batch_counts


class _WorkerStreams(torch.utils.data.IterableDataset):
    """Yields batches: worker w (of the DataLoader) batches its own stream."""

    def __init__(self, plan: EpochPlan):
        self.plan = plan

    def __iter__(self):
        plan = self.plan
        info = torch.utils.data.get_worker_info()
        # A resumed DataLoader starts its cycle at worker 0: rotate the streams so that
        # worker 0 serves the stream whose batch comes next.
        counts = worker_batch_counts(plan.num_batches, plan.workers)
        first = round_robin(counts, plan.skip_batches)[1]
        stream = plan.worker_stream(((info.id if info is not None else 0) + first) % plan.workers)
        share = {"cpu": 0.0, "gpu": 1.0}.get(plan.decode, plan.gpu_share)
        while batch := list(itertools.islice(stream, plan.batch_size)):
            jpegs, labels, ys, xs, flips, names = zip(*batch)
            here = len(batch) - round(len(batch) * share)   # decoded here; the rest on the GPU
            if here == 0:
                images = pack(jpegs, names)
            elif here < len(batch):
                images = MixedBatch(decode_crops(jpegs[:here], ys[:here], xs[:here],
                                                 plan.image_size, names[:here]),
                                    pack(jpegs[here:], names[here:]))
            else:
                images = decode_crops(jpegs, ys, xs, plan.image_size, names)
            yield (images, torch.tensor(labels), torch.tensor(ys), torch.tensor(xs),
                   torch.tensor(flips))


class StopSafeDataLoader(torch.utils.data.DataLoader):
    """A DataLoader whose workers outlive SLURM's stop signals (repro.preempt): they start
    with the signals blocked, then ignore them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, worker_init_fn=preempt.worker_outlives_stop_signals, **kwargs)

    def __iter__(self):
        with preempt.stop_signals_blocked():
            return super().__iter__()


def loader(plan: EpochPlan, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches in the plan's order (see the module's docstring)."""
    workers = plan.workers if plan.workers > 1 else 0  # 1 stream: read in-process
    return StopSafeDataLoader(_WorkerStreams(plan), batch_size=None, num_workers=workers,
                              pin_memory=pin_memory, prefetch_factor=4 if workers else None)


def empty_batch(size: int) -> tuple:
    """A batch of no images, shaped like the loader's, for a rank whose slice ran out."""
    long = torch.zeros(0, dtype=torch.long)
    return torch.zeros(0, 3, size, size, dtype=torch.uint8), long, long, long, long


def device_images(images, ys, xs, flips, plan: EpochPlan, device: torch.device) -> torch.Tensor:
    """A loader batch's images on `device` as uint8 (B,3,S,S), cut and mirrored. GPU path:
    decoded and cut here. CPU path: cut by the workers, mirrored here. Hybrid: each part
    its own way, in batch order."""
    if isinstance(images, MixedBatch):
        k = len(images.crops)
        return torch.cat([device_images(part, ys[a:b], xs[a:b], flips[a:b], plan, device)
                          for part, a, b in ((images.crops, 0, k), (images.jpegs, k, len(ys)))])
    if isinstance(images, Packed):
        return augment.cut(decode_batch(images, device), ys, xs, flips, plan.image_size)
    images = images.to(device, non_blocking=True)
    if not plan.flip:                                  # nothing is mirrored (augment.draw_crop)
        return images
    return augment.mirror(images, flips)


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
        if isinstance(t, MixedBatch):
            return MixedBatch(to_device(t.crops), t.jpegs)
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
            if isinstance(t, MixedBatch):
                t = t.crops
            if not isinstance(t, Packed):
                t.record_stream(current)     # made on the side stream, used on this one
        batch, ahead = ahead, send(next(batches, None))
        yield batch


def device_loader(plan: EpochPlan, device: torch.device):
    """The plan's batches as training consumes them: pinned, then prefetched to `device`."""
    return prefetch(loader(plan, pin_memory=device.type == "cuda"), device)
