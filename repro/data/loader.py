"""The DataLoader over an EpochPlan, its batches (repro.data.batch) prefetched to the
device."""
from __future__ import annotations

import itertools

import torch

from repro import preempt
from repro.augment import Crops
from repro.data.batch import Batch
from repro.data.decode import MixedBatch, decode_crops, pack
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
            crops = Crops(torch.tensor(ys), torch.tensor(xs), torch.tensor(flips),
                          plan.image_size, may_flip=plan.flip)
            yield Batch(images, torch.tensor(labels), crops)


class StopSafeDataLoader(torch.utils.data.DataLoader):
    """A DataLoader whose workers outlive SLURM's stop signals (repro.preempt): they start
    with the signals blocked, then ignore them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, worker_init_fn=preempt.worker_outlives_stop_signals, **kwargs)

    def __iter__(self):
        with preempt.stop_signals_blocked():
            return super().__iter__()


def loader(plan: EpochPlan, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The plan's batches, in its order (repro.data.order)."""
    workers = plan.workers if plan.workers > 1 else 0  # 1 stream: read in-process
    return StopSafeDataLoader(_WorkerStreams(plan), batch_size=None, num_workers=workers,
                              pin_memory=pin_memory, prefetch_factor=4 if workers else None)


def prefetch(batches, device: torch.device):
    """Loader batches with their tensors on `device`. On CUDA the next batch's copies are
    issued on a side stream before the current batch is handed over, so they overlap the
    caller's step, and no blocking copy stalls the host. Packed JPEG bytes stay on the
    host (nvJPEG reads them there). Elsewhere the batches pass through unchanged."""
    if device.type != "cuda":
        yield from batches
        return
    stream, current = torch.cuda.Stream(device), torch.cuda.current_stream(device)

    def send(batch):
        if batch is None:
            return None
        with torch.cuda.stream(stream):
            return batch.to(device)

    batches = iter(batches)
    ahead = send(next(batches, None))
    while ahead is not None:
        current.wait_stream(stream)
        ahead.record_stream(current)     # made on the side stream, used on this one
        batch, ahead = ahead, send(next(batches, None))
        yield batch


def device_loader(plan: EpochPlan, device: torch.device):
    """The plan's batches as training consumes them: pinned, then prefetched to `device`."""
    return prefetch(loader(plan, pin_memory=device.type == "cuda"), device)
