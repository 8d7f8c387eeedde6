"""CIFAR-10 as the python batches (`cifar-10-batches-py`, as torchvision's CIFAR10 reads
them), and the images as cuda-convnet's data providers fed them to its nets.

ROOT/cifar-10-batches-py/ (or ROOT itself) holds data_batch_1..5 and test_batch, each a
pickled dict: 'data' a (N, 3072) uint8 array, each row an image's 1024 red, then 1024
green, then 1024 blue values, rows of 32 left to right; 'labels' N ints in 0..9;
'batch_label', 'filenames'. batches.meta holds 'label_names'. The files are read with a
restricted unpickler that builds only those types (numpy arrays, lists, strings), so a
damaged or foreign file is an error naming it, never code run.

Feeding (cuda-convnet's convdata.py and data.py): whole images minus the training set's
mean image, in 0-255 units; or, for the cropped nets, random (32-2b)^2 crops, mirrored
with probability 1/2, minus the mean image's centre crop, tested on the centre crop or on
the mean softmax of several views (its --multiview-test; VIEWS). Training order: the
batch files in turn (data_batch_1..5), each one's images in file order, in minibatches
that never span two files (`file_minibatches`).

`generate` marks what it writes as generated (repro.provenance); `provenance` says
which kind a folder holds.
"""
from __future__ import annotations

import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from repro import provenance as prov
from repro.exits import ReproError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE, META_FILE = "test_batch", "batches.meta"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIDE, PIXELS = 32, 3 * 32 * 32


class CifarDataError(ReproError):
    """CIFAR-10 files missing or unreadable; the message names the file and the problem."""


class _BatchUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain Python values, nothing else: the python batches
    (written by Python 2's cPickle with numpy, or by this module) need no more."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,   # numpy 1 wrote this
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode,     # bytes, as Python 3 pickles them
               ("__builtin__", "bytes"): bytes}          # ... and empty bytes (an empty batch)

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch does not")
        return self.ALLOWED[module, name]


def _unpickle(path: Path) -> dict:
    try:
        # latin1: the official files come from Python 2 (as torchvision reads them)
        doc = _BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as e:  # a damaged file raises anything: EOF, unpickling, value errors
        raise CifarDataError(f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: "
                             f"{e}); replace it (--download fetches the set again)") from None
    if not isinstance(doc, dict):
        raise CifarDataError(f"{path}: not a CIFAR-10 python batch (it holds a "
                             f"{type(doc).__name__}, not a dict with 'data' and 'labels')")
    return doc


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: images (N, 3, 32, 32) uint8 and labels (N,) int64, checked."""
    path = Path(path)
    doc = _unpickle(path)
    missing = [k for k in ("data", "labels") if k not in doc]
    if missing:
        raise CifarDataError(f"{path}: no {' or '.join(repr(k) for k in missing)} entry "
                             f"(has {', '.join(map(repr, doc)) or 'nothing'})")
    data, labels = doc["data"], np.asarray(doc["labels"])
    if labels.size == 0:            # an empty list reads as float64
        labels = labels.astype(np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != PIXELS:
        shape = f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarDataError(f"{path}: 'data' is {shape}, expected (N, {PIXELS}) uint8")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise CifarDataError(f"{path}: 'labels' should be {len(data)} integers (one per row of "
                             f"'data'), got {labels.dtype} of shape {labels.shape}")
    if len(labels) and not (0 <= labels.min() and labels.max() < len(LABEL_NAMES)):
        raise CifarDataError(f"{path}: labels outside 0..{len(LABEL_NAMES) - 1} "
                             f"(min {labels.min()}, max {labels.max()})")
    return data.reshape(-1, 3, SIDE, SIDE), labels.astype(np.int64)


def batches_folder(root: str | Path) -> Path:
    """ROOT/cifar-10-batches-py, or ROOT itself when it holds the batches."""
    root = Path(root)
    for folder in (root / FOLDER, root):
        if (folder / TEST_FILE).is_file() or (folder / TRAIN_FILES[0]).is_file():
            return folder
    return root / FOLDER


def missing_files(root: str | Path) -> list[str]:
    folder = batches_folder(root)
    return [n for n in (*TRAIN_FILES, TEST_FILE) if not (folder / n).is_file()]


@dataclass
class Cifar10:
    train_images: np.ndarray        # (50000, 3, 32, 32) uint8
    train_labels: np.ndarray        # (50000,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    folder: Path
    train_file_counts: tuple = ()   # images in data_batch_1..5, in that order


def load(root: str | Path) -> Cifar10:
    """The five training batches and the test batch under root; CifarDataError naming the
    root and the files expected when some are missing."""
    missing = missing_files(root)
    if missing:
        folder = batches_folder(root)
        raise CifarDataError(
            f"no CIFAR-10 python batches under {root}: {folder} lacks {', '.join(missing)} "
            f"(expected {folder}/{{{','.join(TRAIN_FILES)},{TEST_FILE}}}, the python version "
            f"{URL} unpacked, as torchvision's CIFAR10 reads it); pass --download to fetch it")
    folder = batches_folder(root)
    train = [read_batch(folder / n) for n in TRAIN_FILES]
    test_images, test_labels = read_batch(folder / TEST_FILE)
    return Cifar10(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                   test_images, test_labels, folder, tuple(len(y) for _, y in train))


def provenance(root: str | Path) -> dict:
    """What a run records about its data: real or generated, and each batch file's sha256."""
    missing = missing_files(root)
    if missing:
        raise CifarDataError(f"no CIFAR-10 python batches under {root}: lacks {', '.join(missing)}")
    folder = batches_folder(root)
    return prov.record(folder, [folder / n for n in (*TRAIN_FILES, TEST_FILE)])


def file_minibatches(file_counts: tuple, batch_size: int) -> list[tuple[int, int]]:
    """cuda-convnet's training order as (start, stop) ranges into the concatenated training
    images: each batch file in turn, its images in file order, cut into minibatches of
    batch_size with a shorter last one per file (10,000 = 78 x 128 + 16): its data
    provider hands the net one file at a time, and the net steps through it in order."""
    ranges, start = [], 0
    for count in file_counts:
        ranges += [(s, min(s + batch_size, start + count)) for s in range(start, start + count, batch_size)]
        start += count
    return ranges


def download(root: str | Path) -> None:
    """Fetch and unpack the python version into root (torchvision's downloader, which
    checks the archive's md5), unless the batches are there already."""
    if not missing_files(root):
        return
    from torchvision.datasets import CIFAR10
    try:
        CIFAR10(str(root), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - no network, a proxy, a full disk: say which
        raise CifarDataError(f"could not download CIFAR-10 from {URL} into {root} "
                             f"({type(e).__name__}: {e}); fetch it yourself and unpack it "
                             f"there") from None


def write_batch(path: str | Path, images: np.ndarray, labels, batch_label: str) -> None:
    """A batch file in the python batches' format (protocol 2, as the official files)."""
    images = np.asarray(images, dtype=np.uint8)
    doc = {"batch_label": batch_label, "labels": [int(y) for y in labels],
           "data": images.reshape(len(images), PIXELS),
           "filenames": [f"generated_{i:05d}.png" for i in range(len(images))]}
    Path(path).write_bytes(pickle.dumps(doc, protocol=2))


def generate(root: str | Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A learnable stand-in of CIFAR-10 in the python batches' format under
    root/cifar-10-batches-py (n_train split over the five training batches): noise with
    a bright band whose rows and colour give the class. Refuses to overwrite a set."""
    folder = prov.fresh_folder(Path(root) / FOLDER, CifarDataError)
    rng = np.random.default_rng(seed)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, len(LABEL_NAMES), n)
        x = rng.integers(0, 160, (n, 3, SIDE, SIDE))
        rows = 3 * labels[:, None] + np.arange(4)                    # a 4-row band per class
        x[np.arange(n)[:, None], labels[:, None] % 3, rows] += 60
        return x, labels

    for i, name in enumerate(TRAIN_FILES):
        share = n_train // 5 + (i < n_train % 5)
        write_batch(folder / name, *images(share), f"training batch {i + 1} of 5")
    write_batch(folder / TEST_FILE, *images(n_test), "testing batch 1 of 1")
    (folder / META_FILE).write_bytes(pickle.dumps(
        {"label_names": list(LABEL_NAMES), "num_cases_per_batch": n_train // 5,
         "num_vis": PIXELS}, protocol=2))
    prov.mark_generated(folder, f"repro.cifar.data.generate(n_train={n_train}, n_test={n_test}, "
                                f"seed={seed}): a stand-in (a class band in noise), not CIFAR-10")
    return folder


# cuda-convnet's --multiview-test: the views whose softmax it averaged, as (y, x, mirrored)
# offsets of a (32-2b)^2 crop. "corners": the four corners and the centre, each also
# mirrored (convdata.py since the revision that completed the 11pct files: its 11%).
# "grid": a 3x3 grid of offsets 0, b, 2b, no mirrors (convdata.py when the 13pct net was
# added: its 13% result; cuda-convnet2's CIFAR provider kept it).
VIEWS = {
    "corners": lambda b: [(y, x, m) for m in (False, True)
                          for y, x in ((0, 0), (0, 2 * b), (b, b), (2 * b, 0), (2 * b, 2 * b))],
    "grid": lambda b: [(y, x, False) for y in (0, b, 2 * b) for x in (0, b, 2 * b)],
}


class DeviceImages:
    """A split's images and labels on the device, fed as cuda-convnet fed them: minus the
    training mean image (its centre crop for the cropped nets), cropped and mirrored at
    random in training (border > 0); tested on the centre crop or on `test_views` (a key
    of VIEWS)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: torch.Tensor,
                 border: int, device: torch.device, test_views: str = "corners"):
        if test_views not in VIEWS:
            raise ValueError(f"test_views must be one of {list(VIEWS)}, got {test_views!r}")
        self.images = torch.from_numpy(images).to(device)
        self.labels = torch.from_numpy(labels).to(device)
        self.border, self.side, self.test_views = border, SIDE - 2 * border, test_views
        b = border
        self.mean = mean.to(device)[:, b:SIDE - b, b:SIDE - b].contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    def train_batch(self, index: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The images at `index`, each at a random crop offset in 0..2b and mirrored with
        probability 1/2 (draws from g, on the device)."""
        x = self.images[index]
        if self.border:
            n, span = len(index), torch.arange(self.side, device=x.device)
            ys, xs = (torch.randint(0, 2 * self.border + 1, (2, n), generator=g, device=x.device))
            flip = torch.rand(n, generator=g, device=x.device) < 0.5
            cols = xs[:, None] + torch.where(flip[:, None], span.flip(0), span)
            rows = ys[:, None] + span
            x = x[torch.arange(n, device=x.device)[:, None, None, None],
                  torch.arange(3, device=x.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]
        return x.float() - self.mean, self.labels[index]

    def views(self, index: torch.Tensor, multiview: bool) -> list[torch.Tensor]:
        """Test inputs: the centre crop (whole image when border is 0), or every view of
        test_views; a mirrored view is the crop mirrored, minus the unmirrored mean."""
        x = self.images[index]
        b = self.border
        offsets = VIEWS[self.test_views](b) if multiview and b else [(b, b, False)]
        out = []
        for y, x0, mirrored in offsets:
            crop = x[:, :, y:y + self.side, x0:x0 + self.side]
            out.append((crop.flip(-1) if mirrored else crop).float() - self.mean)
        return out


def mean_image(images: np.ndarray) -> torch.Tensor:
    """The training set's mean image, (3, 32, 32) float32 in 0-255 units."""
    return torch.from_numpy(images.mean(axis=0, dtype=np.float64).astype(np.float32))
