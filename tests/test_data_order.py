"""repro/data/order.py: an epoch's plan takes every training image once, in an order
set by the seed and epoch, resumes mid-epoch, and draws the crops uniformly."""
import collections
import dataclasses

import numpy as np
import pytest

from repro.data.loader import loader
from repro.data.order import EpochPlan, round_robin, worker_batch_counts
from shard_helpers import plan


def keys_of(p: EpochPlan):
    """Every sample of the plan as (image bytes hash, label), in order, with batch sizes."""
    out, sizes = [], []
    for b in loader(p):
        sizes.append(len(b.labels))
        out += [(int(img.sum()), int(y), int(l))
                for img, y, l in zip(b.images, b.crops.ys, b.labels)]
    return out, sizes


@pytest.mark.parametrize("world, workers", [(1, 1), (1, 3), (2, 1), (2, 2), (3, 2)])
def test_epoch_covers_every_sample_once(train_split, world, workers):
    ids = []
    for rank in range(world):
        p = plan(train_split, rank=rank, world=world, workers=workers, crop="none", flip=False)
        seen, sizes = keys_of(p)
        assert len(sizes) <= p.steps and all(s == p.batch_size for s in sizes[:-1])
        ids += [(s, l) for s, _, l in seen]
    # crop="none" keeps the whole image: its pixel sum identifies it (all distinct here).
    reference = []
    for b in loader(plan(train_split, crop="none", flip=False, shuffle=False)):
        reference += [(int(i.sum()), int(l)) for i, l in zip(b.images, b.labels)]
    assert len(reference) == 37 and len(set(reference)) == 37
    assert collections.Counter(ids) == collections.Counter(reference)


def test_order_is_deterministic_and_changes_with_epoch(train_split):
    a, _ = keys_of(plan(train_split, workers=2))
    b, _ = keys_of(plan(train_split, workers=2))
    c, _ = keys_of(plan(train_split, workers=2, epoch=1))
    assert a == b and a != c


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_skip_resumes_the_same_stream(train_split, workers):
    full, _ = keys_of(plan(train_split, workers=workers, batch_size=4))
    for skip in (1, 3, 5):
        rest, _ = keys_of(plan(train_split, workers=workers, batch_size=4, skip_batches=skip))
        assert rest == full[skip * 4:]


def test_round_robin_accounting_matches_the_dataloader():
    counts = worker_batch_counts(7, 3)
    assert counts == [2, 2, 3]
    assert round_robin(counts, 7) == (counts, 0)
    assert round_robin(counts, 4) == ([2, 1, 1], 1)
    assert round_robin(counts, 6) == ([2, 2, 2], 2)     # workers 0, 1 are done: 2 is next


def test_resume_at_the_end_of_a_short_ranks_epoch(train_split):
    """37 samples over 2 ranks: rank 0 has 18 = a whole number of batches of 6, one batch
    fewer than `steps`; a checkpoint at the epoch's last step skips them all."""
    p = plan(train_split, rank=0, world=2, batch_size=6, workers=2)
    assert p.num_batches == p.steps - 1
    assert keys_of(dataclasses.replace(p, skip_batches=p.steps)) == ([], [])


def test_crop_offsets_are_uniform_and_flip_rate_half(train_split):
    ys, xs, flips = [], [], []
    for epoch in range(30):
        for b in loader(plan(train_split, epoch=epoch, batch_size=37)):
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
