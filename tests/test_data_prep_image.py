"""The paper's preprocessing of one image: shorter side 256, centre crop, RGB; odd files converted."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from data_prep.image import UnreadableImage, crop_geometry, decode_256, encode_jpeg


def _rgb(w, h, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1) + rng.integers(-20, 20, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def _bytes(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


@pytest.mark.parametrize("w,h,expect", [
    (500, 375, (341, 256, 42, 0)), (375, 500, (256, 341, 0, 42)), (256, 256, (256, 256, 0, 0)),
    (100, 50, (512, 256, 128, 0)), (2000, 1999, (256, 256, 0, 0))])
def test_geometry(w, h, expect):
    assert crop_geometry(w, h) == expect


@pytest.mark.parametrize("w,h", [(500, 375), (333, 500), (180, 480), (640, 257), (300, 300)])
def test_is_the_centre_crop_of_the_antialiased_resize(w, h):
    im = _rgb(w, h)
    nw, nh, left, top = crop_geometry(w, h)
    ref = np.asarray(im.resize((nw, nh), Image.Resampling.BICUBIC).crop((left, top, left + 256, top + 256)))
    out = decode_256(_bytes(im, "PNG")).pixels
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref).max() <= 1  # resampling only the crop's box: rounding only


def test_draft_decoding_of_large_jpegs_stays_close():
    im = _rgb(2100, 1100)
    data = _bytes(im, "JPEG", quality=95)
    fast, full = decode_256(data).pixels, decode_256(data, draft=False).pixels
    assert np.abs(fast.astype(int) - full).mean() < 3


@pytest.mark.parametrize("short", [511, 512, 767, 1024, 1535, 2048])
def test_draft_never_reduces_the_shorter_side_below_256(short):
    im = Image.open(io.BytesIO(_bytes(Image.new("RGB", (short + 37, short)), "JPEG")))
    im.draft(None, (256, 256))
    im.load()
    assert min(im.size) >= 256


def test_modes_are_converted_to_rgb():
    base = _rgb(300, 260)
    cmyk = decode_256(_bytes(base.convert("CMYK"), "JPEG", quality=95))
    assert "mode CMYK" in cmyk.notes
    assert np.abs(cmyk.pixels.astype(int) - decode_256(_bytes(base, "PNG")).pixels).mean() < 4
    grey = decode_256(_bytes(base.convert("L"), "JPEG"))
    assert (grey.pixels[..., 0] == grey.pixels[..., 1]).all() and "mode L" in grey.notes
    png = decode_256(_bytes(base, "PNG"))
    assert png.notes == ["format PNG"]


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (300, 300), (10, 20, 30, 0))
    assert (decode_256(_bytes(rgba, "PNG")).pixels == 255).all()
    pal = Image.new("P", (300, 300), 0)
    pal.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 150, 300))
    out = decode_256(_bytes(pal, "PNG", transparency=0)).pixels
    assert (out[:, :100] == (200, 0, 0)).all() and (out[:, 160:] == 255).all()
    la = decode_256(_bytes(Image.new("LA", (300, 300), (0, 255)), "PNG")).pixels
    assert (la == 0).all()


def test_sixteen_bit_greyscale_is_scaled():
    a = np.full((300, 300), 65535, np.uint16)
    a[:, 150:] = 32896  # 128 * 257
    im = Image.fromarray(a)
    out = decode_256(_bytes(im, "PNG")).pixels
    assert (out[:, :100] == 255).all() and (out[:, 160:] == 128).all()


def test_warnings_are_noted_not_fatal(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300)
    out = decode_256(_bytes(_rgb(400, 300), "JPEG"))
    assert out.pixels.shape == (256, 256, 3)
    assert any(n.startswith("warning:") for n in out.notes)


@pytest.mark.parametrize("data", [b"", b"not an image at all", "truncated"])
def test_unreadable_files_raise(data):
    if data == "truncated":
        full = _bytes(_rgb(300, 300), "JPEG")
        data = full[: len(full) // 2]
    with pytest.raises(UnreadableImage):
        decode_256(data)


def test_unreadable_reason_has_no_memory_address():
    # the reason goes into the manifest, which must be the same on every run
    with pytest.raises(UnreadableImage) as e:
        decode_256(b"not an image at all")
    assert str(e.value) == "UnidentifiedImageError: cannot identify image file <_io.BytesIO object>"


def test_encode_is_deterministic_256_rgb_jpeg():
    px = decode_256(_bytes(_rgb(320, 240), "PNG")).pixels
    a, b = encode_jpeg(px, 95), encode_jpeg(px, 95)
    assert a == b
    im = Image.open(io.BytesIO(a))
    assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (256, 256))
    assert len(encode_jpeg(px, 50)) < len(a)
