"""Fashion-MNIST from its four distributed IDX files, read and checked here.

The files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte), each gzipped (.gz, as distributed and as Debian's
`dataset-fashion-mnist` installs them in SYSTEM_DIR) or not (as torchvision unpacks
them), are found in DIR itself or in DIR/FashionMNIST/raw (torchvision's layout).

IDX: a big-endian uint32 magic 0x000008NN (0x08: unsigned bytes, NN: the number of
dimensions), NN uint32 dimensions, then the values. Images are (N, 28, 28), labels
(N,) in 0..9. Every file is checked (magic, dimensions, length; the label range; as
many images as labels), and a missing, truncated or wrong one stops the run with one
line naming the file and the problem (FashionMnistError).

`generate` writes a learnable stand-in of the same files and shapes, marked as such
(repro.provenance); `provenance` says which kind a folder holds.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from repro import provenance as prov
from repro.exits import Refused

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")   # Debian's dataset-fashion-mnist
RAW = Path("FashionMNIST") / "raw"                         # torchvision's layout under DIR
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
NAMES = tuple(name for pair in SPLITS.values() for name in pair)
SIDE, CLASSES = 28, 10
UNSIGNED_BYTE = 0x08


class FashionMnistError(Refused):
    """A Fashion-MNIST file missing or wrong; the message names the file and the problem."""


@dataclass
class FashionMnist:
    train_images: np.ndarray        # (60000, 28, 28) uint8
    train_labels: np.ndarray        # (60000,) int64
    test_images: np.ndarray         # (10000, 28, 28) uint8
    test_labels: np.ndarray
    folder: Path


def _present(folder: Path, name: str) -> Path | None:
    """folder/name, or folder/name.gz; the uncompressed one first (torchvision keeps both)."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def find(root: str | Path) -> dict[str, Path]:
    """Each of the four files' path: from DIR, or else DIR/FashionMNIST/raw (the first of
    the two that holds any of them; never a mix)."""
    root = Path(root)
    for folder in (root, root / RAW):
        found = {name: _present(folder, name) for name in NAMES}
        if any(found.values()):
            missing = [name for name, path in found.items() if path is None]
            if missing:
                raise FashionMnistError(
                    f"{folder / missing[0]}: missing (neither it nor {missing[0]}.gz is there; "
                    f"{folder} holds {len(NAMES) - len(missing)} of Fashion-MNIST's four files, "
                    f"lacks {', '.join(missing)})")
            return found
    raise FashionMnistError(
        f"no Fashion-MNIST under {root}: expected {', '.join(NAMES)} (each may be .gz) in "
        f"{root} or in {root / RAW}; Debian's dataset-fashion-mnist installs them in {SYSTEM_DIR}")


def _bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:   # BadGzipFile is an OSError
        raise FashionMnistError(f"{path}: not a readable gzip file ({type(e).__name__}: {e})") from None


def read_idx(path: str | Path, dims: tuple) -> np.ndarray:
    """An IDX file of unsigned bytes whose dimensions are `dims` (None: any count), checked."""
    path = Path(path)
    data, ndim = _bytes(path), len(dims)
    if len(data) < 4 + 4 * ndim:
        raise FashionMnistError(f"{path}: truncated: {len(data)} bytes, shorter than an IDX "
                                f"header of {ndim} dimensions ({4 + 4 * ndim} bytes)")
    magic, = struct.unpack(">I", data[:4])
    if magic != (UNSIGNED_BYTE << 8 | ndim):
        raise FashionMnistError(f"{path}: magic number 0x{magic:08x}, expected "
                                f"0x{UNSIGNED_BYTE << 8 | ndim:08x} (IDX, unsigned bytes, {ndim} "
                                f"dimension{'s' * (ndim > 1)}): not this file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    if any(want is not None and got != want for got, want in zip(shape, dims)):
        raise FashionMnistError(f"{path}: dimensions {shape}, expected "
                                f"{tuple('N' if d is None else d for d in dims)}")
    body, size = len(data) - 4 - 4 * ndim, int(np.prod(shape))
    if body != size:
        raise FashionMnistError(f"{path}: {'truncated' if body < size else 'too long'}: {body} "
                                f"bytes of values, expected {size} ({' x '.join(map(str, shape))})")
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _split(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = (files[name] for name in SPLITS[split])
    images = read_idx(image_file, (None, SIDE, SIDE))
    labels = read_idx(label_file, (None,))
    if len(images) != len(labels):
        raise FashionMnistError(f"{label_file}: {len(labels)} labels for the {len(images)} "
                                f"images of {image_file}")
    if len(labels) and labels.max() >= CLASSES:
        raise FashionMnistError(f"{label_file}: labels outside 0..{CLASSES - 1} "
                                f"(max {labels.max()})")
    return images, labels.astype(np.int64)


def load(root: str | Path) -> FashionMnist:
    """Both splits from the files under root (see `find`)."""
    files = find(root)
    return FashionMnist(*_split(files, "train"), *_split(files, "test"),
                        folder=files[NAMES[0]].parent)


def provenance(root: str | Path) -> dict:
    """What a run records about its data: real or generated, and each file's sha256."""
    files = find(root)
    return prov.record(files[NAMES[0]].parent, list(files.values()))


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (big-endian, unsigned bytes): magic 0x000008<ndim>, the dims as uint32, data."""
    header = struct.pack(">I", UNSIGNED_BYTE << 8 | array.ndim) \
        + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def generate(root: str | Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Files of Fashion-MNIST's names and shapes (28x28 greyscale, labels 0-9) under
    root/FashionMNIST/raw, uncompressed, marked as generated: noise with a bright band
    whose rows give the class. Refuses to write where files are."""
    raw = prov.fresh_folder(Path(root) / RAW, FashionMnistError)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % CLASSES
        images = rng.integers(0, 40, (n, SIDE, SIDE))
        rows = 2 * labels[:, None] + np.arange(5)                    # (n, 5) rows of each band
        images[np.arange(n)[:, None], rows] += 200
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    prov.mark_generated(raw, f"repro.fashion_mnist.generate(n_train={n_train}, n_test={n_test}, "
                             f"seed={seed}): a stand-in (a class band in noise), not Fashion-MNIST")
    return raw


def d2l_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """A uint8 batch (N, 28, 28), on any device, as d2l feeds it: Resize(size) then
    ToTensor, (N, 1, size, size) in 0..1. Bilinear with antialias (torchvision's Resize
    on a tensor), rounded to whole pixel values as Resize returns uint8 before ToTensor."""
    x = F.interpolate(images[:, None].float(), size=(size, size), mode="bilinear",
                      align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255) / 255
