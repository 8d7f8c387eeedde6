"""repro/data/decode.py: the workers' JPEG decode and crop against Pillow, the GPU and hybrid
paths (decode_batch) against the CPU path, and the bad sample named."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.manifest import ShardsError
from data_prep.shardfile import ShardWriter, read_samples
from repro.data.decode import MixedBatch, Packed, decode_batch, pack
from repro.data.loader import loader
from repro.data.shards import Shard
from shard_helpers import plan


def test_center_crop_and_flip_match_pixels(train_split):
    cpu = torch.device("cpu")

    def first(p):
        b = next(iter(loader(p)))
        return b.device_images(cpu), *b.crops[:3]

    full = first(plan(train_split, crop="none", flip=False, shuffle=False, batch_size=3))[0]
    # The loader's decoder (torchvision's libjpeg-turbo) against Pillow's, on the stored JPEGs.
    stored = [s["jpg"] for s in read_samples(train_split[0].path, 0, 3)]
    pillow = torch.stack([torch.from_numpy(np.array(Image.open(io.BytesIO(j)).convert("RGB")))
                          for j in stored]).permute(0, 3, 1, 2)
    assert (full.float() - pillow.float()).abs().max() <= 2
    center = first(plan(train_split, crop="center", flip=False, shuffle=False, batch_size=3))[0]
    torch.testing.assert_close(center, full[:, :, 14:241, 14:241])
    rand, ys, xs, flips = first(plan(train_split, shuffle=False, batch_size=3, epoch=2))
    assert 0 < int(flips.sum()) < 3     # this draw mirrors some crops and not others
    for img, whole, y, x, f in zip(rand, full, ys, xs, flips):
        expect = whole[:, y:y + 227, x:x + 227]
        torch.testing.assert_close(img, expect.flip(-1) if f else expect)


@pytest.mark.parametrize("decode, share, kinds", [
    ("gpu", 0.0, {Packed}),
    ("hybrid", 0.5, {MixedBatch, torch.Tensor}),     # 37 = 6 batches of 6 + 1: the last all CPU
    ("hybrid", 0.9, {MixedBatch, Packed}),           # 6 * 0.9 -> 5 of 6; the last one -> 1 of 1
])
def test_gpu_and_hybrid_paths_give_the_cpu_paths_crops(train_split, decode, share, kinds):
    """Workers pass all (gpu) or some (hybrid) of a batch as JPEG bytes; decode_batch (here
    on the CPU device, nvJPEG on CUDA) then cut give the same windows and mirrors, in the
    same order, as the CPU path."""
    cpu = torch.device("cpu")
    workers = plan(train_split, epoch=3, batch_size=6, workers=2)
    other = plan(train_split, epoch=3, batch_size=6, workers=2, decode=decode, gpu_share=share)
    seen = set()
    for one, two in zip(loader(workers), loader(other)):
        seen.add(type(two.images))
        assert torch.equal(one.labels, two.labels) and torch.equal(one.crops.ys, two.crops.ys)
        assert torch.equal(one.crops.flips, two.crops.flips)
        a, b = one.device_images(cpu), two.device_images(cpu)
        assert torch.equal(a, b)      # one decoder on the CPU (nvJPEG may differ by a level)
    assert seen == kinds


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("decode", ["gpu", "hybrid"])
def test_nvjpeg_gives_the_cpu_paths_crops(train_split, decode):
    """On CUDA the bytes go through nvJPEG: another decoder (rounding may differ by a level
    or so), the same windows, mirrors and order."""
    cuda = torch.device("cuda")
    workers = plan(train_split, epoch=3, batch_size=6, workers=2)
    other = plan(train_split, epoch=3, batch_size=6, workers=2, decode=decode, gpu_share=0.5)
    for one, two in zip(loader(workers), loader(other)):
        a, b = one.device_images(cuda).float(), two.device_images(cuda).float()
        assert (a - b).abs().mean() < 2.0


def jpeg_bytes(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (9, 90, 200)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("jpg, cls, message", [
    (b"not a jpeg", b"1", r"bad\.tar: sample k1: cannot decode its JPEG"),
    (jpeg_bytes(256)[:400], b"1", r"bad\.tar: sample k1: cannot decode its JPEG \(\w"),
    (jpeg_bytes(64), b"1", r"bad\.tar: sample k1: image is 64x64, expected 256x256"),
    (jpeg_bytes(256), b"one", r"bad\.tar: sample k1 has no jpg or no integer cls"),
])
def test_a_bad_sample_in_a_shard_names_the_shard_and_sample(tmp_path, jpg, cls, message):
    path = tmp_path / "bad.tar"
    with ShardWriter(path) as w:
        w.add("k0", jpeg_bytes(256), 0, "n0")
        w.add("k1", jpg, 0, "n1")
    if cls != b"1":       # ShardWriter writes integer classes: patch the second one's byte
        data = path.read_bytes()
        at = data.index(b"k1.cls") + 512
        path.write_bytes(data[:at] + b"x" + data[at + 1:])
    with pytest.raises(ValueError, match=message):
        list(loader(plan([Shard(str(path), 2)], shuffle=False, batch_size=2)))


@pytest.mark.parametrize("bad, message", [
    (b"not a jpeg", r"s\.tar: sample b: cannot decode its JPEG"),
    (jpeg_bytes(64), r"s\.tar: sample b: image is 64x64, expected 256x256"),
])
def test_the_gpu_paths_bad_sample_is_named(bad, message):
    """decode_batch (nvJPEG on CUDA; here on the CPU device) names the sample that fails."""
    packed = pack([jpeg_bytes(256), bad], ["s.tar: sample a", "s.tar: sample b"])
    with pytest.raises(ShardsError, match=message):
        decode_batch(packed, torch.device("cpu"))
