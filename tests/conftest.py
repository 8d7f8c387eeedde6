"""Fixtures shared by the test files. What the tests only read (shard sets, a trained smoke
run) is built once a session; a test that changes one works on a copy."""
from __future__ import annotations

import os

import pytest
import torch

from repro.data.shards import read_manifest, split_shards
from run_helpers import SMALL_RUN, SMOKE, TRAINED_SHARDS, make_checkpoint
from shard_helpers import write_shards

# `make test` runs the suite on two pytest-xdist workers, CI's two cores: one thread each,
# in the worker and in every process its tests start, or the two oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

# The longest units (below) first, so that the two workers end together.
LONGEST_FIRST = ("test_slurm", "test_train.py", "test_gpu_session.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST)
                     if item.path.name.startswith(prefix)), len(LONGEST_FIRST))
    items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """The units a worker takes whole, in the collection's order: a module, so that its
    module-scoped fixtures are built once, and both Slurm files as one, so that one cluster
    runs at a time. (xdist_group marks would say so, but pytest 9.2 drops the nodeid suffix
    they rely on.)"""
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "slurm" if "/test_slurm" in module else module

    config.option.loadscopereorder = False
    return Units(config, log)


# The trainer tests' set: 44 training images are 3 steps of the smoke config's batch of 16.
TRAINER_SHARDS = dict(classes=4, train=44, val=12, shard_size=10)


@pytest.fixture(scope="session")
def make_shards(tmp_path_factory):
    """write_shards(**sizes), built once a session for each distinct `sizes`: read only."""
    built = {}

    def make(**sizes):
        key = tuple(sorted(sizes.items()))
        if key not in built:
            built[key] = write_shards(tmp_path_factory.mktemp("shards"), **sizes)
        return built[key]
    return make


@pytest.fixture(scope="module")
def shards(request, make_shards):
    """The shard set of the test module: its SHARDS (write_shards's sizes), else the
    trainer tests' set."""
    return make_shards(**getattr(request.module, "SHARDS", TRAINER_SHARDS))


@pytest.fixture(scope="module")
def ckpts(shards, tmp_path_factory):
    """Two random models (seeds 0 and 1, run_helpers.make_checkpoint) for the module's
    shards: their class list, and fc8 fitted so that predictions vary from image to image."""
    d = tmp_path_factory.mktemp("ckpt")
    classes = read_manifest(shards)["classes"]
    return (make_checkpoint(d / "a.pt", classes=classes, shards=shards),
            make_checkpoint(d / "b.pt", "model.seed=1", classes=classes, shards=shards))


@pytest.fixture(scope="session")
def train_split(make_shards):
    """The loader tests' training split, as Shard entries: 37 images of 3 classes in shards of
    8, so that the last shard is part full and no batch size divides the epoch."""
    return split_shards(make_shards(classes=3, train=37, val=9, shard_size=8), "train")


@pytest.fixture(scope="session")
def trained(make_shards, tmp_path_factory):
    """One epoch of `repro train` (the smoke config at 67 px) on TRAINED_SHARDS: last.pt and
    best.pt are the same step-000000003.pt. Read only: copy it to change it."""
    from repro.cli import main

    data = make_shards(**TRAINED_SHARDS)
    run = tmp_path_factory.mktemp("smoke") / "run"
    assert main(["train", "--config", str(SMOKE), "--data", str(data), "--out", str(run),
                 *SMALL_RUN, "data.workers=1",
                 "schedule.epochs=1"]) == 0
    return run

