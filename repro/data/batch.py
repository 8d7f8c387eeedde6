"""A loader batch: its images, labels and crops, and its images on the device.

The images come in one of three forms, by the plan's decode setting: uint8 (B,3,S,S)
crops cut by the workers, not yet mirrored (cpu); the JPEG bytes, packed (gpu); or the
first part of the batch as crops and the rest as bytes (hybrid). Each form moves like a
tensor (`to`, `record_stream`); `Batch.device_images` is the one place that tells them
apart, to make them the batch's crops on the device.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from repro.augment import Crops, cut, mirror
from repro.data.decode import MixedBatch, Packed, decode_batch


class Batch(NamedTuple):
    """One loader batch. A NamedTuple, so that the DataLoader pins each of its tensors (it
    would pass a dataclass through unpinned)."""
    images: torch.Tensor | Packed | MixedBatch
    labels: torch.Tensor
    crops: Crops

    def to(self, device: torch.device) -> Batch:
        """Its tensors copied to `device` without blocking (packed bytes stay on the host)."""
        return Batch(self.images.to(device, non_blocking=True),
                     self.labels.to(device, non_blocking=True),
                     self.crops.to(device, non_blocking=True))

    def record_stream(self, stream: torch.cuda.Stream) -> None:
        """Its device tensors, made on another stream, are used on `stream` (see
        torch.Tensor.record_stream)."""
        for t in (self.images, self.labels, *self.crops[:3]):
            t.record_stream(stream)

    def device_images(self, device: torch.device) -> torch.Tensor:
        """uint8 (B,3,S,S) on `device`, each sample cut and mirrored at its crop."""
        return _cut_on_device(self.images, self.crops, device)


def _cut_on_device(images, crops: Crops, device: torch.device) -> torch.Tensor:
    """Bytes: decoded on the device, then cut. Crops cut by the workers: mirrored there.
    Hybrid: each part its own way, in batch order."""
    if isinstance(images, MixedBatch):
        k = len(images.crops)
        return torch.cat([_cut_on_device(images.crops, crops.part(0, k), device),
                          _cut_on_device(images.jpegs, crops.part(k, None), device)])
    if isinstance(images, Packed):
        return cut(decode_batch(images, device), crops)
    images = images.to(device, non_blocking=True)
    return mirror(images, crops) if crops.may_flip else images


def empty_batch(size: int) -> Batch:
    """A batch of no images, shaped like the loader's, for a rank whose slice ran out."""
    long = torch.zeros(0, dtype=torch.long)
    return Batch(torch.zeros(0, 3, size, size, dtype=torch.uint8), long,
                 Crops(long, long, long, size, may_flip=False))
