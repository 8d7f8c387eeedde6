"""repro/data/batch.py: what reaches the net, the crops cut and mirrored on the device."""
import pytest
import torch

from repro.data.loader import loader
from shard_helpers import plan


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
@pytest.mark.parametrize("crop, flip", [("center", True), ("random", False), ("center", False)])
def test_translations_and_reflections_switch_independently(train_split, crop, flip, decode):
    """Section 4.1's two augmentations are separate switches: reflections without
    translations mirror about half the centre crops; translations without reflections
    mirror none. Checked against the whole images cut and mirrored here, on the CPU
    path and on the GPU path (decode_batch on the CPU device)."""
    cpu = torch.device("cpu")
    whole = plan(train_split, crop="none", flip=False, shuffle=False, batch_size=37)
    full = next(iter(loader(whole))).device_images(cpu)
    p = plan(train_split, crop=crop, flip=flip, shuffle=False, batch_size=37, epoch=5, decode=decode)
    b = next(iter(loader(p)))
    got, (ys, xs, flips) = b.device_images(cpu), b.crops[:3]
    assert (0.25 < flips.float().mean() < 0.75) if flip else not flips.any()
    if crop == "center":
        assert set(ys.tolist()) == set(xs.tolist()) == {(256 - 227) // 2}
    for img, ref, y, x, f in zip(got, full, ys, xs, flips):
        expect = ref[:, y:y + 227, x:x + 227]
        assert torch.equal(img, expect.flip(-1) if f else expect)
