import collections
import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.shardfile import ShardWriter, read_samples
from data_prep.manifest import ShardsError
from repro.data.decode import MixedBatch, Packed, decode_batch, pack
from repro.data.loader import device_loader, loader, prefetch
from repro.data.order import EpochPlan, round_robin, worker_batch_counts
from repro.data.shards import Shard, split_shards
from shard_helpers import write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = write_shards(tmp_path_factory.mktemp("shards"), classes=3, train=37, val=9, shard_size=8)
    return split_shards(d, "train")


def plan(shards, **kw):
    base = dict(shards=tuple(shards), epoch=0, seed=1, rank=0, world=1, batch_size=5, workers=1,
                crop="random", crop_size=227, flip=True, shuffle=True, shuffle_buffer=16)
    return EpochPlan(**base | kw)


def keys_of(p: EpochPlan):
    """Every sample of the plan as (image bytes hash, label), in order, with batch sizes."""
    out, sizes = [], []
    for b in loader(p):
        sizes.append(len(b.labels))
        out += [(int(img.sum()), int(y), int(l))
                for img, y, l in zip(b.images, b.crops.ys, b.labels)]
    return out, sizes


@pytest.mark.parametrize("world, workers", [(1, 1), (1, 3), (2, 1), (2, 2), (3, 2)])
def test_epoch_covers_every_sample_once(shards, world, workers):
    ids = []
    for rank in range(world):
        p = plan(shards, rank=rank, world=world, workers=workers, crop="none", flip=False)
        seen, sizes = keys_of(p)
        assert len(sizes) <= p.steps and all(s == p.batch_size for s in sizes[:-1])
        ids += [(s, l) for s, _, l in seen]
    # crop="none" keeps the whole image: its pixel sum identifies it (all distinct here).
    reference = []
    for b in loader(plan(shards, crop="none", flip=False, shuffle=False)):
        reference += [(int(i.sum()), int(l)) for i, l in zip(b.images, b.labels)]
    assert len(reference) == 37 and len(set(reference)) == 37
    assert collections.Counter(ids) == collections.Counter(reference)


def test_order_is_deterministic_and_changes_with_epoch(shards):
    a, _ = keys_of(plan(shards, workers=2))
    b, _ = keys_of(plan(shards, workers=2))
    c, _ = keys_of(plan(shards, workers=2, epoch=1))
    assert a == b and a != c


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_skip_resumes_the_same_stream(shards, workers):
    full, _ = keys_of(plan(shards, workers=workers, batch_size=4))
    for skip in (1, 3, 5):
        rest, _ = keys_of(plan(shards, workers=workers, batch_size=4, skip_batches=skip))
        assert rest == full[skip * 4:]


def test_round_robin_accounting_matches_the_dataloader():
    counts = worker_batch_counts(7, 3)
    assert counts == [2, 2, 3]
    assert round_robin(counts, 7) == (counts, 0)
    assert round_robin(counts, 4) == ([2, 1, 1], 1)
    assert round_robin(counts, 6) == ([2, 2, 2], 2)     # workers 0, 1 are done: 2 is next


def test_crop_offsets_are_uniform_and_flip_rate_half(shards):
    ys, xs, flips = [], [], []
    for epoch in range(30):
        for b in loader(plan(shards, epoch=epoch, batch_size=37)):
            ys += b.crops.ys.tolist(); xs += b.crops.xs.tolist(); flips += b.crops.flips.tolist()
    ys, xs = np.array(ys), np.array(xs)
    n = len(ys)
    assert ys.min() >= 0 and ys.max() <= 29 and xs.max() <= 29
    # 30 positions per axis: each should get ~1/30; chi-square against uniform.
    for v in (ys, xs):
        counts = np.bincount(v, minlength=30)
        chi2 = ((counts - n / 30) ** 2 / (n / 30)).sum()
        assert chi2 < 70, chi2          # 29 dof: p ~ 5e-5 at 70
    assert abs(np.mean(flips) - 0.5) < 4 * 0.5 / np.sqrt(n)


def test_center_crop_and_flip_match_pixels(shards):
    cpu = torch.device("cpu")

    def first(p):
        b = next(iter(loader(p)))
        return b.device_images(cpu), *b.crops[:3]

    full = first(plan(shards, crop="none", flip=False, shuffle=False, batch_size=3))[0]
    # The loader's decoder (torchvision's libjpeg-turbo) against Pillow's, on the stored JPEGs.
    stored = [s["jpg"] for s in read_samples(shards[0].path, 0, 3)]
    pillow = torch.stack([torch.from_numpy(np.array(Image.open(io.BytesIO(j)).convert("RGB")))
                          for j in stored]).permute(0, 3, 1, 2)
    assert (full.float() - pillow.float()).abs().max() <= 2
    center = first(plan(shards, crop="center", flip=False, shuffle=False, batch_size=3))[0]
    torch.testing.assert_close(center, full[:, :, 14:241, 14:241])
    rand, ys, xs, flips = first(plan(shards, shuffle=False, batch_size=3, epoch=2))
    assert 0 < int(flips.sum()) < 3     # this draw mirrors some crops and not others
    for img, whole, y, x, f in zip(rand, full, ys, xs, flips):
        expect = whole[:, y:y + 227, x:x + 227]
        torch.testing.assert_close(img, expect.flip(-1) if f else expect)


@pytest.mark.parametrize("workers", [1, 2])
def test_crops_arrive_channels_last(shards, workers):
    """Workers write each crop as the decoder lays out pixels (H,W,3): the batch is
    channels_last memory, also after crossing from a worker process."""
    for b in loader(plan(shards, workers=workers, batch_size=4)):
        images = b.images
        assert images.shape == (4, 3, 227, 227) or len(images) < 4
        assert images.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("decode, share, kinds", [
    ("gpu", 0.0, {Packed}),
    ("hybrid", 0.5, {MixedBatch, torch.Tensor}),     # 37 = 6 batches of 6 + 1: the last all CPU
    ("hybrid", 0.9, {MixedBatch, Packed}),           # 6 * 0.9 -> 5 of 6; the last one -> 1 of 1
])
def test_gpu_and_hybrid_paths_give_the_cpu_paths_crops(shards, decode, share, kinds):
    """Workers pass all (gpu) or some (hybrid) of a batch as JPEG bytes; decode_batch (here
    on the CPU device, nvJPEG on CUDA) then cut give the same windows and mirrors, in the
    same order, as the CPU path."""
    cpu = torch.device("cpu")
    workers = plan(shards, epoch=3, batch_size=6, workers=2)
    other = plan(shards, epoch=3, batch_size=6, workers=2, decode=decode, gpu_share=share)
    seen = set()
    for one, two in zip(loader(workers), loader(other)):
        seen.add(type(two.images))
        assert torch.equal(one.labels, two.labels) and torch.equal(one.crops.ys, two.crops.ys)
        assert torch.equal(one.crops.flips, two.crops.flips)
        a, b = one.device_images(cpu), two.device_images(cpu)
        assert torch.equal(a, b)      # one decoder on the CPU (nvJPEG may differ by a level)
    assert seen == kinds


def test_resume_at_the_end_of_a_short_ranks_epoch(shards):
    """37 samples over 2 ranks: rank 0 has 18 = a whole number of batches of 6, one batch
    fewer than `steps`; a checkpoint at the epoch's last step skips them all."""
    p = plan(shards, rank=0, world=2, batch_size=6, workers=2)
    assert p.num_batches == p.steps - 1
    assert keys_of(dataclasses.replace(p, skip_batches=p.steps)) == ([], [])


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("decode", ["gpu", "hybrid"])
def test_nvjpeg_gives_the_cpu_paths_crops(shards, decode):
    """On CUDA the bytes go through nvJPEG: another decoder (rounding may differ by a level
    or so), the same windows, mirrors and order."""
    cuda = torch.device("cuda")
    workers = plan(shards, epoch=3, batch_size=6, workers=2)
    other = plan(shards, epoch=3, batch_size=6, workers=2, decode=decode, gpu_share=0.5)
    for one, two in zip(loader(workers), loader(other)):
        a, b = one.device_images(cuda).float(), two.device_images(cuda).float()
        assert (a - b).abs().mean() < 2.0


@pytest.mark.parametrize("bad, message", [
    (b"not a jpeg", r"s\.tar: sample b: cannot decode its JPEG"),
    (jpeg_bytes(64), r"s\.tar: sample b: image is 64x64, expected 256x256"),
])
def test_the_gpu_paths_bad_sample_is_named(bad, message):
    """decode_batch (nvJPEG on CUDA; here on the CPU device) names the sample that fails."""
    packed = pack([jpeg_bytes(256), bad], ["s.tar: sample a", "s.tar: sample b"])
    with pytest.raises(ShardsError, match=message):
        decode_batch(packed, torch.device("cpu"))


def tensors(b) -> list[torch.Tensor]:
    return [b.images, b.labels, *b.crops[:3]]


def test_prefetch_passes_batches_through_off_cuda(shards):
    p = plan(shards, workers=2, batch_size=6)
    direct = [[t.clone() for t in tensors(b)] for b in loader(p)]
    fetched = list(prefetch(loader(p), torch.device("cpu")))
    assert len(fetched) == len(direct) == p.num_batches
    assert all(torch.equal(a, b) for x, y in zip(direct, fetched) for a, b in zip(x, tensors(y)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("decode", ["cpu", "gpu", "hybrid"])
def test_prefetch_to_cuda_gives_the_same_batches(shards, decode):
    """The side-stream copies arrive whole while the caller keeps the GPU busy."""
    cuda = torch.device("cuda")
    p = plan(shards, workers=2, batch_size=6, decode=decode, gpu_share=0.5)
    direct = [b.device_images(cuda).cpu() for b in loader(p)]
    busy = torch.randn(2048, 2048, device=cuda)
    for expect, b in zip(direct, device_loader(p, cuda)):
        busy = busy @ busy / 2048                  # work queued ahead of each batch's use
        assert b.labels.is_cuda and b.crops.ys.is_cuda
        assert torch.equal(b.device_images(cuda).cpu(), expect)


STOP_SCRIPT = r"""
import os, signal, subprocess, sys, time, torch
from repro.data.loader import StopSafeDataLoader

class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        while True:
            yield torch.zeros(1)
            time.sleep(0.01)

batches = iter(StopSafeDataLoader(Stream(), batch_size=None, num_workers=2))
if sys.argv[1] == "group":          # SLURM's SIGTERM to every process: the workers live on,
    # even those still starting (no batch taken yet)
    subprocess.run(["kill", "-s", "TERM", "--", f"-{os.getpgrp()}"])   # not from the parent
    time.sleep(0.5)
    for _ in range(20):
        next(batches)
    print("served after SIGTERM", flush=True)
else:                               # the trainer fails: its exit must still end the workers
    next(batches)
    raise RuntimeError("the trainer failed")
"""


@pytest.mark.parametrize("case", ["group", "crash"])
def test_loader_workers_outlive_the_jobs_sigterm_but_not_their_parents_exit(case):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    # the script's own process group: its killpg reaches it and its workers, not pytest
    code = ("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + STOP_SCRIPT
            if case == "group" else STOP_SCRIPT)
    done = subprocess.run([sys.executable, "-c", code, case], cwd=root, capture_output=True,
                          text=True, timeout=60, start_new_session=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    if case == "group":
        assert done.returncode == 0 and "served after SIGTERM" in done.stdout, done.stderr[-2000:]
    else:
        assert done.returncode == 1 and "the trainer failed" in done.stderr


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
@pytest.mark.parametrize("crop, flip", [("center", True), ("random", False), ("center", False)])
def test_translations_and_reflections_switch_independently(shards, crop, flip, decode):
    """Section 4.1's two augmentations are separate switches: reflections without
    translations mirror about half the centre crops; translations without reflections
    mirror none. Checked against the whole images cut and mirrored here, on the CPU
    path and on the GPU path (decode_batch on the CPU device)."""
    cpu = torch.device("cpu")
    whole = plan(shards, crop="none", flip=False, shuffle=False, batch_size=37)
    full = next(iter(loader(whole))).device_images(cpu)
    p = plan(shards, crop=crop, flip=flip, shuffle=False, batch_size=37, epoch=5, decode=decode)
    b = next(iter(loader(p)))
    got, (ys, xs, flips) = b.device_images(cpu), b.crops[:3]
    assert (0.25 < flips.float().mean() < 0.75) if flip else not flips.any()
    if crop == "center":
        assert set(ys.tolist()) == set(xs.tolist()) == {(256 - 227) // 2}
    for img, ref, y, x, f in zip(got, full, ys, xs, flips):
        expect = ref[:, y:y + 227, x:x + 227]
        assert torch.equal(img, expect.flip(-1) if f else expect)
