"""The paper's input pipeline in one place (sections 2 and 4.1), like torchvision's presets:
where each crop is, how it is cut, and the per-pixel work.

Training (section 4.1): a random 227x227 window of the 256x256 image, mirrored with
probability 1/2 (`draw_crop`), cut on the host by a loader worker (`cut_on_host`) or on
the device (`cut`); then on the device, batched, the mean image cut at the same window
is subtracted and each image gets its PCA colour shift (`Normalizer.train_input`, the
one function a training step feeds its model with). Subtracting the
mean cut like the crop is the same as subtracting it from the 256x256 image before
cropping, as the paper describes (section 2).

Test time (section 6): the centre window, or the paper's ten views (four corners and
the centre, and their reflections), cut from the whole image on the device minus the
mean image at each view (`Normalizer.eval_input`, the one function validation,
`repro eval` and `repro figures` feed their models with).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from data_prep.image import IMAGE_SIZE
from data_prep.stats import load_stats
from repro.config import AugmentConfig

Crop = tuple[int, int, bool]        # (y, x, mirrored): a size x size window of the image


def draw_crop(rng: np.random.Generator, mode: str, size: int, flip: bool) -> Crop:
    """One sample's crop: mode random (a uniform offset), center, or none (the whole
    image); in every mode mirrored half the time if `flip` (reflections without
    translations are an ablation of section 4.1). The draws are made in every mode, so
    that the stream of draws, and a resume's replay of it, does not depend on the mode."""
    y, x = rng.integers(0, 2 ** 31, size=2)
    mirrored = bool(rng.integers(0, 2)) and flip     # drawn whether or not it is used
    if mode == "random":
        span = IMAGE_SIZE - size + 1
        return int(y % span), int(x % span), mirrored
    if mode == "center":
        c = (IMAGE_SIZE - size) // 2
        return c, c, mirrored
    return 0, 0, mirrored


def eval_views(image: int, crop: int, ten_crop: bool) -> list[Crop]:
    """The test crops: the centre, or the paper's four corners and centre with their
    horizontal reflections (section 6)."""
    c, far = (image - crop) // 2, image - crop
    if not ten_crop:
        return [(c, c, False)]
    corners = [(0, 0), (0, far), (far, 0), (far, far), (c, c)]
    return [(y, x, flip) for flip in (False, True) for y, x in corners]


def cut_on_host(pixels_hwc: torch.Tensor, y: int, x: int, size: int) -> torch.Tensor:
    """A decoded (H,W,3) image's size x size window at (y, x), unmirrored: the loader
    workers' cut. The mirror is left to the device (`mirror`), where it is one gather for
    the batch; a reversed copy on the host costs about a third of a decode."""
    return pixels_hwc[y:y + size, x:x + size]


class Crops(NamedTuple):
    """A batch's crops (`draw_crop`'s draws, as tensors): sample i's window is size x size
    at (ys[i], xs[i]), mirrored where flips[i]. `may_flip` False: the plan mirrors none,
    so crops cut on the host skip the mirror pass. A NamedTuple, so that the DataLoader
    pins its tensors."""
    ys: torch.Tensor
    xs: torch.Tensor
    flips: torch.Tensor
    size: int
    may_flip: bool = True

    def to(self, device: torch.device, non_blocking: bool = False) -> Crops:
        ys, xs, flips = (t.to(device, non_blocking=non_blocking) for t in self[:3])
        return self._replace(ys=ys, xs=xs, flips=flips)

    def part(self, start: int, stop: int | None) -> Crops:
        """The crops of samples [start, stop)."""
        return self._replace(ys=self.ys[start:stop], xs=self.xs[start:stop],
                             flips=self.flips[start:stop])


def crop_windows(crops: Crops, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices (B, size) of each sample's crop window, the columns
    reversed where the crop is mirrored; index a (.., 256, 256) image with them."""
    offsets = torch.arange(crops.size, device=device)
    rows = crops.ys.to(device)[:, None] + offsets
    mirrored = crops.flips.to(device)[:, None].bool()
    cols = crops.xs.to(device)[:, None] + torch.where(mirrored, crops.size - 1 - offsets, offsets)
    return rows, cols


def cut(images: torch.Tensor, crops: Crops) -> torch.Tensor:
    """uint8 (B,3,H,W) on a device -> each sample's window, mirrored where flipped: one
    gather, into a channels_last (B,3,S,S) batch on that device."""
    rows, cols = crop_windows(crops, images.device)
    batch = torch.arange(len(images), device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def mirror(images: torch.Tensor, crops: Crops) -> torch.Tensor:
    """Crops cut on the host (unmirrored) -> mirrored where flipped."""
    zeros = torch.zeros(len(images), dtype=torch.long)
    return cut(images, Crops(zeros, zeros, crops.flips, images.shape[-1]))


def _mean_at(mean_image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(B,3,S,S), channels_last: the HWC mean image at each sample's rows and columns."""
    return mean_image[rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _normalize(images, rows, cols, mean_image, noise, dtype, memory_format):
    """uint8 crops -> minus the mean at their windows, plus each image's RGB noise, as
    `dtype` in `memory_format`. Eager: a pass over the batch per op; compiled: one."""
    x = images.float() - _mean_at(mean_image, rows, cols)
    if noise is not None:
        x = x + noise[:, :, None, None]
    return x.to(dtype).contiguous(memory_format=memory_format)


class Normalizer:
    """Model input from uint8 crops: in the memory format the model runs in, and in
    `dtype` (bf16 under bf16 autocast: the cast the first conv would make, done here);
    with compile=True, the training path is one compiled kernel."""

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

    def pca_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n,3) RGB offsets, one per image: sum_i p_i * alpha_i * scale_i, alpha ~ N(0, std)."""
        alpha = torch.randn(n, 3, generator=generator, device=self.device) * self.cfg.pca_std
        return alpha @ self.pca_basis.T

    def train_input(self, batch, generator: torch.Generator | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training, section 4.1: a loader batch (repro.data.batch) -> (model input, labels)
        on the device, in the order the paper gives it."""
        # uint8 on the device (JPEG bytes decoded there), cut and mirrored at the batch's crops
        images = batch.device_images(self.device)
        # minus the mean image at each crop, + PCA noise, in the model's dtype and layout
        x = self(images, batch.crops, generator)
        return x, batch.labels.to(self.device, non_blocking=True)

    def __call__(self, images: torch.Tensor, crops: Crops,
                 generator: torch.Generator | None) -> torch.Tensor:
        """uint8 crops (B,3,S,S) cut at `crops` -> model input in 0-255 units minus the mean
        image at the same windows (+ PCA noise when a generator is given), in the model's
        dtype and memory format."""
        images = images.to(self.device, non_blocking=True)
        rows, cols = crop_windows(crops, self.device)
        noise = (self.pca_noise(len(images), generator)
                 if generator is not None and self.cfg.pca_std > 0 else None)
        return self._normalize(images, rows, cols, self.mean_image, noise, self.dtype,
                               self.memory_format)

    def views(self, images: torch.Tensor, crops: list[Crop], size: int) -> torch.Tensor:
        """uint8 whole images (B,3,H,W) -> (V*B,3,size,size) model input, view-major: each
        image cut at each fixed crop minus the mean image cut the same way. Slices, no
        per-sample gather, no noise."""
        b = len(images)
        out = torch.empty(len(crops) * b, 3, size, size, device=self.device,
                          memory_format=self.memory_format)
        for v, (y, x, mirrored) in enumerate(crops):
            crop = images[:, :, y:y + size, x:x + size].to(self.device, non_blocking=True)
            mean = self.mean_image[y:y + size, x:x + size].permute(2, 0, 1)
            if mirrored:
                crop, mean = crop.flip(-1), mean.flip(-1)
            torch.sub(crop, mean, out=out[v * b:(v + 1) * b])
        return out

    def eval_input(self, images: torch.Tensor, size: int, ten_crop: bool = False) -> torch.Tensor:
        """Test time: whole uint8 images (B,3,256,256) -> the model input for the centre
        crop (B,...) or the ten views (10*B,..., view-major)."""
        return self.views(images, eval_views(images.shape[-1], size, ten_crop), size)


def derived_seed(*keys: int) -> int:
    """A 63-bit seed from (seed, epoch, step, rank...): randomness with no state to save."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> 1)


def step_generator(device: torch.device, *keys: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derived_seed(*keys))
    return g
