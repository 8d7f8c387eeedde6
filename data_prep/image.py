"""One source image -> the paper's 256x256 RGB crop, and back out as JPEG bytes.

The paper (section 2): rescale so the shorter side is 256, then take the
central 256x256 patch. Here precisely:

* decode any format Pillow reads (ImageNet holds a PNG named .JPEG, CMYK and
  greyscale JPEGs; ILSVRC-2010's train tar gzip-compressed JPEGs, unzipped here as
  Fuel's converter does); warnings (corrupt EXIF, extraneous bytes) are collected,
  never fatal; EXIF orientation and ICC profiles are ignored, as PIL-based
  loaders (torchvision's ImageFolder) ignore them (``exif=True``, for a user's own
  photo in ``repro predict``, turns the image upright first);
* convert to RGB: CMYK/L/YCbCr by Pillow's conversion, 16-bit and float
  greyscale scaled to 0-255, anything with transparency (RGBA, LA, P with a
  transparent colour) composited on white;
* geometry: shorter side exactly 256, longer side round(256 * long / short),
  antialiased BICUBIC (Pillow widens the kernel when reducing), then the crop
  starting at (long' - 256) // 2;
* speed: large JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
  (``Image.draft``) only while the shorter side stays >= 256 (this moves pixels
  by about a grey level on average, less than the q95 re-encoding does: see
  PAPER_NOTES "Downsampling"), and only the source region under the crop is
  resampled (``resize(box=...)`` gives the crop of the full resize).
"""
from __future__ import annotations

import gzip
import io
import re
import zlib
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

IMAGE_SIZE = 256
RESAMPLE = Image.Resampling.BICUBIC
SUBSAMPLING = "4:2:0"  # libjpeg's default at quality 95, written down so it cannot drift


class UnreadableImage(Exception):
    """The bytes are not an image Pillow can decode (truncated, empty, garbage)."""


# Pillow's messages can hold an object's repr ("cannot identify image file <_io.BytesIO
# object at 0x7f...>"); the address differs every run and would make the manifest differ.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def error_text(e: BaseException) -> str:
    """'ExceptionClass: message', with memory addresses removed so it is the same every run."""
    return _ADDRESS.sub("", f"{type(e).__name__}: {e}")


@dataclass
class Decoded:
    """A decoded, resized, centre-cropped image and what was odd about the source."""

    pixels: np.ndarray  # (256, 256, 3) uint8, RGB
    notes: list[str] = field(default_factory=list)  # e.g. "PNG", "mode CMYK", "warning: ..."


def crop_geometry(width: int, height: int, size: int = IMAGE_SIZE):
    """(resized_w, resized_h, left, top) of the shorter-side-`size` resize and its centre crop."""
    if width <= height:
        new_w, new_h = size, max(size, round(size * height / width))
    else:
        new_w, new_h = max(size, round(size * width / height)), size
    return new_w, new_h, (new_w - size) // 2, (new_h - size) // 2


def _to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    notes.append(f"mode {mode}")
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im).astype(np.float64)
        if mode.startswith("I") and a.max(initial=0) > 255:
            a = a / 257.0  # 16-bit samples
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    return im.convert("RGB")


GZIP_MAGIC = b"\x1f\x8b"


def _gunzip(data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise UnreadableImage(f"gzip: {error_text(e)}") from None


def decode_256(data: bytes, size: int = IMAGE_SIZE, draft: bool = True,
               exif: bool = False) -> Decoded:
    """Decode `data` and return its `size` x `size` RGB centre crop (see module doc);
    exif: turned as its EXIF orientation says first."""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    notes: list[str] = []
    if data[:2] == GZIP_MAGIC:
        data = _gunzip(data)
        notes.append("gzip-compressed")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            im = Image.open(io.BytesIO(data))
            if im.format != "JPEG":
                notes.append(f"format {im.format}")
            width, height = im.size
            scale = 1.0
            if draft and im.format == "JPEG" and min(width, height) >= 2 * size:
                # Pillow picks the largest of 1/2, 1/4, 1/8 that keeps both sides >= size.
                res = im.draft(None, (size, size))
                if res is not None:
                    scale = width / res[1][2]
            im.load()
            if exif:
                upright = ImageOps.exif_transpose(im)
                if upright.size != im.size:          # a quarter turn: the sides swap
                    width, height = height, width
                im = upright
            im = _to_rgb(im, notes)
        except DECODE_ERRORS as e:
            raise UnreadableImage(error_text(e)) from None
    for w in caught:
        notes.append(f"warning: {w.message}")
    new_w, new_h, left, top = crop_geometry(width, height, size)
    # The source region under the crop, in the (possibly draft-reduced) image's coordinates.
    sx, sy = width / new_w / scale, height / new_h / scale
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    out = im.resize((size, size), RESAMPLE, box=box)
    return Decoded(np.asarray(out), notes)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 array; deterministic for a given Pillow/libjpeg build."""
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=quality, subsampling=SUBSAMPLING)
    return buf.getvalue()
