"""JPEG bytes -> uint8 pixels. The CPU path decodes in the loader workers (libjpeg-turbo
via torchvision) and cuts each crop there; the GPU path packs a batch's bytes for nvJPEG
on the device; the hybrid path splits each batch between the two (`MixedBatch`)."""
from __future__ import annotations

import re
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from data_prep.image import IMAGE_SIZE
from data_prep.manifest import ShardsError
from repro.augment import cut_on_host

# torchvision 0.29 deprecates its image decoders for torchcodec (not on our GPU machines),
# and torch warns that the JPEG bytes, which it only reads, are read-only. Filtered once
# here, for those modules only (a catch_warnings per batch would be thread-unsafe and would
# reset which warnings were already shown).
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
warnings.filterwarnings("ignore", message="The given buffer is not writable",
                        module=r"repro\.data\.decode")


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
    if pixels.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ShardsError(f"{name}: image is {pixels.shape[-1]}x{pixels.shape[-2]}, "
                          f"expected {IMAGE_SIZE}x{IMAGE_SIZE} (shards not built by data_prep?)")


def _torch_message(e: Exception) -> str:
    """A torch/torchvision C++ error's message without its source location."""
    return re.sub(r"^.*?\.(?:cpp|h):\d+, ", "", str(e).splitlines()[0])


def decode_crops(jpegs: list[bytes], ys, xs, size: int, names: list[str]) -> torch.Tensor:
    """The CPU path: decode each JPEG and copy its size x size window at (y, x) into one
    uint8 batch (B,3,S,S). The batch is laid out channels_last (B,S,S,3 in memory, as the
    decoder writes pixels): one copy per image, and the layout the fast model wants.
    `names` say where each JPEG came from, for the error if one cannot be decoded."""
    shape = (len(jpegs), size, size, 3)
    if torch.utils.data.get_worker_info() is None:
        batch = torch.empty(shape, dtype=torch.uint8)
    else:   # allocated in shared memory, where it crosses to the main process uncopied
        storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
        batch = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    for out, jpeg, y, x, name in zip(batch.numpy(), jpegs, ys, xs, names):
        out[:] = cut_on_host(decode_one(jpeg, name).permute(1, 2, 0), y, x, size).numpy()
    return batch.permute(0, 3, 1, 2)


class Packed(NamedTuple):
    """The GPU path's JPEG bytes of a batch as one buffer + lengths: one shared-memory
    tensor per batch crosses from the worker, not one per image; `names` say where each
    came from, for errors. Moved like a tensor (`to`, `record_stream`), it stays on the
    host, where nvJPEG reads it."""
    buffer: torch.Tensor
    lengths: torch.Tensor
    names: tuple[str, ...]

    def to(self, device: torch.device, non_blocking: bool = False) -> Packed:
        return self

    def record_stream(self, stream: torch.cuda.Stream) -> None:
        pass


def pack(jpegs: list[bytes], names) -> Packed:
    return Packed(torch.frombuffer(bytearray().join(jpegs), dtype=torch.uint8),   # one copy
                  torch.tensor([len(j) for j in jpegs]), tuple(names))


class MixedBatch(NamedTuple):
    """The hybrid path: the batch's first len(crops) samples decoded and cut by the workers,
    the rest left as JPEG bytes for the GPU, so that both decoders feed one batch. Moved
    like a tensor: its crops go to the device, its bytes stay on the host."""
    crops: torch.Tensor
    jpegs: Packed

    def to(self, device: torch.device, non_blocking: bool = False) -> MixedBatch:
        return self._replace(crops=self.crops.to(device, non_blocking=non_blocking))

    def record_stream(self, stream: torch.cuda.Stream) -> None:
        self.crops.record_stream(stream)


_decode_streams: dict[int, torch.cuda.Stream] = {}


def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _decode_streams:
        _decode_streams[index] = torch.cuda.Stream(index)
    return _decode_streams[index]


def decode_batch(packed: Packed, device: torch.device) -> torch.Tensor:
    """The GPU path: decode a packed batch of JPEGs on `device` (nvJPEG on CUDA) into
    whole uint8 images (B,3,256,256)."""
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
