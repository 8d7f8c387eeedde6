"""Training-set statistics, accumulated exactly: the mean image and the RGB covariance/PCA.

The paper subtracts the mean image (256x256x3) and adds PCA colour noise from
the eigenvectors/eigenvalues of the 3x3 RGB covariance over all training
pixels. Both are taken here over the decoded, resized 256x256 pixels (before
JPEG re-encoding), in one pass with the shard build.

Exactness: integer sums (per-position pixel sums, uint32 within a shard, and the
RGB cross-products summed over all pixels), merged in int64, far below 2^63 ~ 9.2e18 even
for the Fall 2011 release: 1.42e7 images * 65536 pixels * 255^2 ~ 6.1e16. The sums are
fixed-size, so memory is flat in the number of images and classes. Shard sums add up in
any order to the same integers, so the result does not depend on how many workers ran. Only the
final mean/covariance are divided, from exact Python integers.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import atomic
from .image import IMAGE_SIZE
from .manifest import ShardsError

STATS_KEYS = ("mean_image", "rgb_mean", "rgb_cov", "eigval", "eigvec", "count")


@dataclass
class Sums:
    count: int
    pixel_sum: np.ndarray  # (256, 256, 3) int64 (uint32 within a shard): sum over images of each position
    outer_sum: np.ndarray  # (3, 3) int64: sum over all pixels of rgb rgb^T

    @classmethod
    def zeros(cls, size: int = IMAGE_SIZE, dtype=np.int64) -> "Sums":
        """dtype uint32 halves the memory traffic of one shard's sums (exact below 16.8M images)."""
        return cls(0, np.zeros((size, size, 3), dtype), np.zeros((3, 3), np.int64))

    def add(self, pixels: np.ndarray) -> None:
        """Add one (H, W, 3) uint8 image."""
        assert self.pixel_sum.dtype == np.int64 or self.count < 2**32 // 255
        np.add(self.pixel_sum, pixels, out=self.pixel_sum)
        # 8-bit products fit uint16 exactly (255^2 < 2^16), and one image's sums fit uint32
        # (65536 * 255^2 < 2^32). Plain ufuncs, no BLAS: BLAS calls start spinning threads in
        # every worker process and halve the build's speed.
        x = np.ascontiguousarray(pixels.reshape(-1, 3).T).astype(np.uint16)
        assert x.shape[1] * 255 * 255 < 2**32
        rr, gg, bb, rg, rb, gb = (int(np.add.reduce(x[i] * x[j], dtype=np.uint32))
                                  for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)))
        self.outer_sum += np.array([[rr, rg, rb], [rg, gg, gb], [rb, gb, bb]], np.int64)
        self.count += 1

    def __iadd__(self, other: "Sums") -> "Sums":
        self.count += other.count
        self.pixel_sum += other.pixel_sum.astype(np.int64)
        self.outer_sum += other.outer_sum
        return self

    def save(self, path: Path) -> None:
        """A shard's sidecar: uncompressed (zlib would cost ~60 ms a shard), pixel sums as uint32
        (~0.8 MB; exact for shards of up to 16.8 million images)."""
        assert self.count < 2**32 // 255
        with atomic.atomic_open(path) as f:
            np.savez(f, count=np.int64(self.count), pixel_sum=self.pixel_sum.astype(np.uint32),
                     outer_sum=self.outer_sum)

    @classmethod
    def load(cls, path: Path) -> "Sums":
        with np.load(path) as z:
            return cls(int(z["count"]), z["pixel_sum"].astype(np.int64), z["outer_sum"].astype(np.int64))


def pca(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns), each column's largest-magnitude entry positive."""
    val, vec = np.linalg.eigh(cov)
    order = np.argsort(val)[::-1]
    val, vec = val[order], vec[:, order]
    signs = np.sign(vec[np.argmax(np.abs(vec), axis=0), np.arange(vec.shape[1])])
    return val, vec * np.where(signs == 0, 1, signs)


def finalize(s: Sums) -> dict[str, np.ndarray]:
    """The stats.npz arrays (the contract in load_stats' docstring) from exact sums."""
    if s.count == 0:
        raise ValueError("no training images: statistics are undefined")
    n_pix = s.count * s.pixel_sum.shape[0] * s.pixel_sum.shape[1]
    s1 = [int(v) for v in s.pixel_sum.sum(axis=(0, 1))]
    s2 = [[int(v) for v in row] for row in s.outer_sum]
    # cov_ij = (n * S2_ij - S1_i * S1_j) / n^2, numerator exact in Python integers.
    cov = np.array([[(n_pix * s2[i][j] - s1[i] * s1[j]) / (n_pix * n_pix) for j in range(3)] for i in range(3)])
    eigval, eigvec = pca(cov)
    return {
        "mean_image": (s.pixel_sum / s.count).astype(np.float32),
        "rgb_mean": np.array([v / n_pix for v in s1]),
        "rgb_cov": cov,
        "eigval": eigval,
        "eigvec": eigvec,
        "count": np.int64(s.count),
    }


def save_stats(path: Path, stats: dict[str, np.ndarray]) -> None:
    """Write stats.npz atomically; uncompressed np.savez is byte-deterministic."""
    with atomic.atomic_open(path) as f:
        np.savez(f, **{k: stats[k] for k in STATS_KEYS})


def load_stats(path: Path | str) -> dict[str, np.ndarray]:
    """stats.npz as a dict: mean_image (256,256,3) float32 0-255, rgb_mean (3,), rgb_cov (3,3),
    eigval (3,) descending, eigvec (3,3) eigenvectors as columns, count (int)."""
    try:
        with np.load(path) as z:
            return {k: z[k] for k in STATS_KEYS}
    except (ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:   # damaged, not unreadable
        raise ShardsError(f"{path}: not a readable stats file ({type(e).__name__}: {e}); "
                          f"rerun build_shards") from None
