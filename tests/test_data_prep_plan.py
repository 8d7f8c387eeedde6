"""The plan on disk (data_prep.plan): the external merge sort gives the order and digest of
the in-memory sort the build used before, names duplicate keys, leaves no spilled run
behind, and holds memory flat in the number of images."""
from __future__ import annotations

import hashlib
import random
import tracemalloc
from collections import Counter

import pytest

from data_prep import plan
from data_prep.plan import read_shard, write_plan
from data_prep.records import Record, SourceError


def records(n: int, split: str = "train", classes: int = 50):
    for i in range(n):
        w = f"n{i % classes:08d}"
        yield Record(split, f"{w}_{i}", w, "/src/x.tar", 512 * i, 100 + i % 7, f"x.tar/{w}_{i}.JPEG")


def in_memory(recs, split, seed, size, limit):
    """The shards and digest as the build made them in memory (commit 7a77bd5's plan_split,
    plan_digest): by key, train then stably by blake2b(seed:key), cut, hashed."""
    recs = sorted(recs, key=lambda r: r.key)
    if split == "train":
        recs = sorted(recs, key=lambda r: hashlib.blake2b(f"{seed}:{r.key}".encode(), digest_size=16).digest())
    recs = recs[:limit]
    shards = [recs[i:i + size] for i in range(0, len(recs), size)]
    h = hashlib.sha256()
    for shard in shards:
        for r in shard:
            h.update(f"{r.key}\t{r.wnid}\n".encode())
        h.update(b"--\n")
    return shards, h.hexdigest()


@pytest.mark.parametrize("split, limit", [("train", None), ("train", 777), ("val", None), ("val", 5)])
def test_the_external_sort_is_the_in_memory_sort(tmp_path, monkeypatch, split, limit):
    monkeypatch.setattr(plan, "RUN", 300)  # seven runs, six of them spilled to disk
    recs = list(records(2000, split))
    random.Random(0).shuffle(recs)
    p = write_plan(iter(recs), split, tmp_path / "plan.jsonl", 64, 3, limit)
    shards, digest = in_memory(recs, split, 3, 64, limit)
    assert [read_shard(p.path, offset, n) for offset, n in p.shards] == shards
    assert p.digest == digest and p.listed == 2000 and p.per_class == Counter(r.wnid for r in recs)
    assert [f.name for f in tmp_path.iterdir()] == ["plan.jsonl"]  # the spilled runs are gone


def test_duplicate_keys_in_different_runs_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "RUN", 100)
    recs = list(records(500))
    recs.append(recs[10]._replace(path="/src/y.tar", origin="y.tar/again.JPEG"))
    with pytest.raises(SourceError, match=r"train: 1 file names occur twice .*: x.tar/n00000010_10.JPEG and "
                                          r"y.tar/again.JPEG"):
        write_plan(iter(recs), "train", tmp_path / "plan.jsonl", 64, 0, None)
    assert [f.name for f in tmp_path.iterdir()] in ([], ["plan.jsonl"])


def test_memory_is_flat_in_the_number_of_images(tmp_path, monkeypatch):
    """One run in memory, the rest on disk: more images add only a read buffer per spilled
    run (~14 kB a run here of 300 images; at plan.RUN, 200,000, about 0.1 byte an image),
    where a list of the records costs ~300 bytes an image."""
    monkeypatch.setattr(plan, "RUN", 300)
    peaks = []
    for n in (1_500, 9_000):
        tracemalloc.start()
        write_plan(records(n), "train", tmp_path / f"plan-{n}.jsonl", 1024, 0, None)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    tracemalloc.start()
    held = list(records(1000))
    per_record = tracemalloc.get_traced_memory()[0] / len(held)
    tracemalloc.stop()
    per_run = (peaks[1] - peaks[0]) / (9_000 / 300 - 1_500 / 300)
    assert per_run < 20_000 and per_record > 200
