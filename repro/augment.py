"""Per-pixel work on the device, batched: float conversion, PCA colour noise,
and subtraction of the mean image cut at each sample's crop window.

The workers have already cut each crop (at y, x, maybe mirrored); the mean
image is cut and mirrored the same way here, which is the same as subtracting
it from the 256x256 image before cropping, as the paper describes (section 2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_prep.stats import load_stats
from repro.config import AugmentConfig


def crop_windows(ys, xs, flips, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices (B, size) of each sample's crop window, the columns
    reversed where the crop is mirrored; index a (.., 256, 256) image with them."""
    offsets = torch.arange(size, device=device)
    rows = ys.to(device)[:, None] + offsets
    mirrored = flips.to(device)[:, None].bool()
    cols = xs.to(device)[:, None] + torch.where(mirrored, size - 1 - offsets, offsets)
    return rows, cols


def _window(mean_image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(B,3,S,S), channels_last: the HWC mean image at each sample's rows and columns."""
    return mean_image[rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _normalize(images, rows, cols, mean_image, noise, dtype, memory_format):
    """uint8 crops -> minus the mean window, plus each image's RGB noise, as `dtype` in
    `memory_format`. Eager: a pass over the batch per op; compiled: one."""
    x = images.float() - _window(mean_image, rows, cols)
    if noise is not None:
        x = x + noise[:, :, None, None]
    return x.to(dtype).contiguous(memory_format=memory_format)


class Normalizer:
    """Model input from the loader's uint8 crops: in the memory format the model runs in,
    and in `dtype` (bf16 under bf16 autocast: the cast the first conv would make, done
    here); with compile=True, the whole of it is one compiled kernel."""

    def __init__(self, stats_path: str | Path, cfg: AugmentConfig, device: torch.device,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 compile: bool = False):
        stats = load_stats(stats_path)
        self.cfg = cfg
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.dtype = dtype
        self._normalize = torch.compile(_normalize) if compile else _normalize
        mean_image = torch.from_numpy(np.asarray(stats["mean_image"], dtype=np.float32))
        if cfg.mean == "rgb":
            mean_image = mean_image.mean(dim=(0, 1), keepdim=True).expand_as(mean_image)
        elif cfg.mean == "none":
            mean_image = torch.zeros_like(mean_image)
        self.mean_image = mean_image.contiguous().to(device)  # 256,256,3: the crops' layout
        eigval = torch.as_tensor(np.asarray(stats["eigval"], dtype=np.float64))
        eigvec = torch.as_tensor(np.asarray(stats["eigvec"], dtype=np.float64))  # columns
        # The paper writes alpha_i * lambda_i; the author's code scales by sqrt(lambda_i),
        # the standard deviation along each principal axis (PAPER_NOTES: "PCA magnitude").
        scale = eigval.clamp(min=0).sqrt() if cfg.pca_scale == "sqrt_eigval" else eigval
        self.pca_basis = (eigvec * scale).float().to(device)  # column i = p_i * scale_i

    def views(self, images: torch.Tensor, windows: list[tuple[int, int, bool]],
              size: int) -> torch.Tensor:
        """uint8 whole images (B,3,H,W) -> (V*B,3,size,size) model input, view-major: each
        image cut at each fixed window (y, x, mirrored) minus the mean image cut the same
        way. Test time: slices, no per-sample gather, no noise."""
        b = len(images)
        out = torch.empty(len(windows) * b, 3, size, size, device=self.device,
                          memory_format=self.memory_format)
        for v, (y, x, mirrored) in enumerate(windows):
            crop = images[:, :, y:y + size, x:x + size].to(self.device, non_blocking=True)
            mean = self.mean_image[y:y + size, x:x + size].permute(2, 0, 1)
            if mirrored:
                crop, mean = crop.flip(-1), mean.flip(-1)
            torch.sub(crop, mean, out=out[v * b:(v + 1) * b])
        return out

    def pca_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n,3) RGB offsets, one per image: sum_i p_i * alpha_i * scale_i, alpha ~ N(0, std)."""
        alpha = torch.randn(n, 3, generator=generator, device=self.device) * self.cfg.pca_std
        return alpha @ self.pca_basis.T

    def __call__(self, images: torch.Tensor, ys, xs, flips,
                 generator: torch.Generator | None) -> torch.Tensor:
        """uint8 crops (B,3,S,S) -> model input in 0-255 units minus the mean image
        (+ PCA noise when a generator is given, i.e. in training)."""
        images = images.to(self.device, non_blocking=True)
        rows, cols = crop_windows(ys, xs, flips, images.shape[-1], self.device)
        noise = (self.pca_noise(len(images), generator)
                 if generator is not None and self.cfg.pca_std > 0 else None)
        return self._normalize(images, rows, cols, self.mean_image, noise, self.dtype,
                               self.memory_format)


def derived_seed(*keys: int) -> int:
    """A 63-bit seed from (seed, epoch, step, rank...): randomness with no state to save."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> 1)


def step_generator(device: torch.device, *keys: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derived_seed(*keys))
    return g
