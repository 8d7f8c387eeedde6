"""Runs and checkpoints for the tests: the smoke config cut down to run in seconds,
checkpoints of a random model (no training), the paper's test procedure written out
independently of repro.evaluate, and comparisons of finished runs."""
from __future__ import annotations

import contextlib
import io
import subprocess
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2.functional import ten_crop

from repro import checkpoint
from repro.config import config_from_dict, load_config, model_kwargs
from repro.model import build_model
from repro.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
# The smoke config on the 4-class shard sets: the paper's architecture on 67 px crops (fast
# on a CPU), every training image used each epoch, a run that repeats bit for bit, and
# checkpoints at epoch ends only (one is ~140 MB at these sizes: fc6-fc8 and their momentum;
# a save per step doubled a run's time). A test of mid-epoch saves asks for them.
SMALL_RUN = ["model.num_classes=4", "data.crop_size=67", "data.steps_per_epoch=0",
             "train.deterministic=true", "checkpoint.every_minutes=1000"]
# The shards of conftest's `trained` run: 48 training images, 3 steps of 16 an epoch.
TRAINED_SHARDS = dict(classes=4, train=48, val=4, shard_size=16)

# `python -m repro.d2l` (the book's net on Fashion-MNIST) at its smallest.
D2L_CONFIG = ROOT / "configs" / "d2l_fashion_mnist.yaml"
D2L_TINY = ["data.crop_size=67", "data.batch_size=8", "data.workers=0", "train.device=cpu",
            "logging.progress=off"]

# make_checkpoint's models: 7 classes (more than 5, so that top-5 can miss) and 68 px crops.
# 68 leaves an even margin (256 - 68): TenCrop takes the centre crop of the mirrored image,
# which is the mirror of the centre patch only when the margin is even; repro eval mirrors
# the patches themselves, as the paper says, whatever the margin.
CLASSES = 7
CROP = 68
# The shards those checkpoints are made for, in test_evaluate.py: val batches of 5, 5, 2.
EVAL_SHARDS = dict(classes=CLASSES, train=8, val=12, shard_size=5)
CHECKPOINT_CONFIG = [f"model.num_classes={CLASSES}", f"data.crop_size={CROP}", "model.init=torch",
                     "data.val_batch_size=5"]


def make_checkpoint(path: Path, *overrides: str, classes=None, shards=None) -> Path:
    """A random model, seeded by model.seed. A random net maps every image to nearly the same
    fc7 vector; given `shards`, fc8 is centred on their training images' mean fc7 and
    sharpened, so that its predictions vary from image to image."""
    cfg = load_config(SMOKE, CHECKPOINT_CONFIG + list(overrides))
    model = build_model(model_kwargs(cfg))
    if shards is not None:
        with torch.no_grad():
            common = fc7_by_hand(model.eval(), centre_inputs(shards, "train", CROP)).mean(0)
            model.fc8.weight *= 100
            model.fc8.bias.copy_(-model.fc8.weight @ common)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "classes": classes,
                "format_version": checkpoint.FORMAT_VERSION}, path)
    return path


def fc7_by_hand(model, x):
    """The last hidden layer, layer by layer (Figure 2), in eval mode."""
    x = model.pool1(model.norm1(model.conv1(x)))      # norm1, norm2: ReLU then LRN
    x = model.pool2(model.norm2(model.conv2(x)))
    x = model.pool5(F.relu(model.conv5(F.relu(model.conv4(F.relu(model.conv3(x)))))))
    return F.relu(model.fc7(F.relu(model.fc6(torch.flatten(x, 1)))))


def split_images(shards: Path, split: str = "val"):
    """A split read with tarfile and PIL, in the manifest's and the tars' order."""
    manifest = json.loads((shards / "manifest.json").read_text())
    images, labels = [], []
    for entry in manifest["splits"][split]["shards"]:
        with tarfile.open(shards / entry["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in (n for n in members if n.endswith(".jpg")):
            images.append(np.asarray(Image.open(io.BytesIO(members[name])).convert("RGB")))
            labels.append(int(members[name[:-4] + ".cls"]))
    return np.stack(images), torch.tensor(labels)


def centre_inputs(shards: Path, split: str, size: int) -> torch.Tensor:
    """Model inputs: the images minus the mean image, centre crops."""
    images = split_images(shards, split)[0].astype(np.float32)
    x = torch.from_numpy(images - np.load(shards / "stats.npz")["mean_image"]).permute(0, 3, 1, 2)
    c = (256 - size) // 2
    return x[:, :, c:c + size, c:c + size].contiguous()


@torch.no_grad()
def reference_probs(ckpt: Path, shards: Path, images: np.ndarray) -> torch.Tensor:
    """The paper's test procedure written out independently: subtract the mean image from
    the 256x256 image, take torchvision's TenCrop, average the softmax over the 10."""
    state = torch.load(ckpt, weights_only=False)
    model = build_model(model_kwargs(config_from_dict(state["config"])))
    model.load_state_dict(state["model"])
    model.eval()
    mean = np.load(shards / "stats.npz")["mean_image"]
    out = []
    for img in images:
        x = torch.from_numpy(img.astype(np.float32) - mean).permute(2, 0, 1)
        out.append(model(torch.stack(ten_crop(x, CROP))).softmax(1).mean(0))
    return torch.stack(out)


def final_weights(run: Path) -> dict:
    return checkpoint.load(run / "checkpoints" / "last.pt")["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    """Bit for bit: the promise of exact resume."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def metrics_so_far(run: Path) -> list[dict]:
    """metrics.jsonl of a run that may not have started writing it yet."""
    try:
        return read_metrics(run)
    except (FileNotFoundError, json.JSONDecodeError):
        return []


@contextlib.contextmanager
def tmpfs(disk: Path, size: str):
    """A tmpfs of `size` mounted at `disk`, to fill (skips the test where it cannot mount)."""
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)
