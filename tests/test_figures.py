"""repro figures: the Figure 3 filter grid's pixel layout, Figure 4's neighbours against a
brute-force search on fc7 computed layer by layer, the curves, and the W&B copy."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from repro.cli import main
from repro.distributed import pick_device
from repro.evaluate import load_member
from repro.figures import TITLE_H, filter_grid, nearest_neighbours, top5_predictions
from run_helpers import (CLASSES, CROP, centre_inputs, fc7_by_hand, make_checkpoint, reference_probs,
                         split_images)

# 96 kernels of 11 px, 16 a row, each pixel 4x4, 2 px between kernels, 8 px between towers:
# a tower is 3 rows: 3*44 + 2*2 = 136 px high; the grid 16*44 + 15*2 = 734 wide.
GRID_H, GRID_W, TOWER_H = 2 * 136 + 8, 734, 136
SHARDS = dict(classes=CLASSES, train=23, val=12, shard_size=5)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shards):
    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()
    classes = json.loads((shards / "manifest.json").read_text())["classes"]
    make_checkpoint(run / "checkpoints" / "last.pt", classes=classes, shards=shards)
    records = [{"event": "train", "epoch": e, "step": s, "global_step": 2 * e + s,
                "loss": 1.4 - 0.1 * (2 * e + s), "top1_err": 70.0, "lr": 0.01}
               for e in range(2) for s in (1, 2)]
    records += [{"event": "val", "epoch": e + 1, "global_step": 2 * e + 2, "top1_err": 60.0 - e,
                 "top5_err": 0.0, "n": 12} for e in range(2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_filter_grid_layout():
    weight = np.random.default_rng(0).normal(size=(96, 3, 11, 11)).astype(np.float32)
    grid = filter_grid(weight, towers=2)
    assert grid.shape == (GRID_H, GRID_W, 3) and grid.dtype == np.uint8
    assert (grid[TOWER_H:TOWER_H + 8] == 255).all()           # the gap between the towers
    assert (grid[:, 44:46] == 255).all()                      # the gap after the first column
    # Kernel 50 is tower 2's kernel 2: row 0, column 2 of the lower block.
    w = weight[50]
    scaled = np.round(255 * (w - w.min()) / (w.max() - w.min())).transpose(1, 2, 0)
    y, x = TOWER_H + 8, 2 * 46
    assert np.array_equal(grid[y:y + 44:4, x:x + 44:4], scaled.astype(np.uint8))
    assert np.array_equal(grid[y + 3:y + 44:4, x + 3:x + 44:4], scaled.astype(np.uint8))
    assert filter_grid(weight[:48], towers=1).shape == (TOWER_H, GRID_W, 3)


@torch.no_grad()
def test_nearest_neighbours_match_brute_force(shards, run_dir):
    member = load_member(run_dir / "checkpoints" / "last.pt", shards / "stats.npz",
                         pick_device("cpu"))
    (q_img, q_lab), (n_img, n_lab, n_dist) = nearest_neighbours(member, shards, 3, scan=20)

    (_, val_labels), (train_images, train_labels) = (split_images(shards, s) for s in ("val", "train"))
    val, train = (fc7_by_hand(member.model, centre_inputs(shards, split, CROP))
                  for split in ("val", "train"))
    d = torch.cdist(val[:3], train[:20])
    expected, order = d.sort(dim=1)
    torch.testing.assert_close(n_dist, expected[:, :6], rtol=1e-4, atol=1e-4)
    assert torch.equal(n_lab, train_labels[order[:, :6]])
    assert torch.equal(q_lab, val_labels[:3])
    c = (256 - CROP) // 2
    train_crops = torch.from_numpy(train_images[:, c:c + CROP, c:c + CROP]).permute(0, 3, 1, 2)
    assert torch.equal(n_img, train_crops[order[:, :6]])


def test_figures_cli_writes_pngs(shards, run_dir, capsys):
    assert main(["figures", str(run_dir), "--data", str(shards), "--queries", "2",
                 "--scan", "10", "--device", "cpu"]) == 0
    names = sorted(p.name for p in (run_dir / "figures").iterdir())
    assert names == ["curves.png", "filters.png", "neighbours.png", "predictions.png"]
    with Image.open(run_dir / "figures" / "filters.png") as img:   # the grid under its title
        assert img.size == (GRID_W, GRID_H + TITLE_H)
        pixels = np.asarray(img.convert("RGB"))
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    conv1 = state["model"]["conv1.weight"].float().numpy()
    assert np.array_equal(pixels[TITLE_H:], filter_grid(conv1, towers=2))
    assert (pixels[:TITLE_H] < 128).any()                     # the title's text
    for name in ("curves.png", "neighbours.png", "predictions.png"):
        with Image.open(run_dir / "figures" / name) as img:
            assert img.format == "PNG" and min(img.size) > 100


def test_figures_go_to_the_runs_wandb_run(shards, run_dir, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    state["config"]["logging"]["wandb"] = "offline"
    torch.save(state, run / "checkpoints" / "last.pt")
    (run / "wandb_id.txt").write_text("figs1234")
    os.environ["WANDB_SILENT"] = "true"
    assert main(["figures", str(run), "--device", "cpu"]) == 0
    media = list((run / "wandb").glob("offline-run-*-figs1234/files/media/images/figures/*.png"))
    assert sorted(p.name.split("_")[0] for p in media) == ["filters"]


@torch.no_grad()
def test_the_whole_training_split_is_searched_by_default(shards, run_dir):
    """scan 0 (the default): the neighbours over all 23 training images, streamed in
    batches (data.val_batch_size 5 here), equal a brute-force search over all of them."""
    member = load_member(run_dir / "checkpoints" / "last.pt", shards / "stats.npz",
                         pick_device("cpu"))
    _, (_, n_lab, n_dist) = nearest_neighbours(member, shards, 2, scan=0)
    train = fc7_by_hand(member.model, centre_inputs(shards, "train", CROP))
    assert len(train) == 23
    val = fc7_by_hand(member.model, centre_inputs(shards, "val", CROP))[:2]
    expected, order = torch.cdist(val, train).sort(dim=1)
    torch.testing.assert_close(n_dist, expected[:, :6], rtol=1e-4, atol=1e-4)
    assert torch.equal(n_lab, split_images(shards, "train")[1][order[:, :6]])


def test_figure_4_left_is_the_ten_crop_top5(shards, run_dir):
    """Figure 4, left: the first eight val images' five most probable labels and their
    probabilities, as the paper's test procedure (TenCrop, written out) gives them."""
    member = load_member(run_dir / "checkpoints" / "last.pt", shards / "stats.npz",
                         pick_device("cpu"))
    images, labels, values, indices = top5_predictions(member, shards, count=8)
    val_images, val_labels = split_images(shards, "val")
    assert images.shape == (8, 3, 256, 256) and torch.equal(labels, val_labels[:8])
    expect_values, expect_indices = reference_probs(
        run_dir / "checkpoints" / "last.pt", shards, val_images[:8]).topk(5, dim=1)
    assert torch.equal(indices, expect_indices)
    torch.testing.assert_close(values, expect_values, rtol=1e-4, atol=1e-6)


def test_neighbour_labels_name_the_class_and_mark_the_query_class():
    from repro.figures import class_labels, row_labels

    labels = class_labels({"classes": ["n01440764", "n02102040", "n09999999"],
                           "words": ["tench, Tinca tinca", "English springer", ""]})
    assert labels == [("tench", "n01440764"), ("English springer", "n02102040"),
                      ("", "n09999999")]
    assert row_labels(labels, 0, [0, 2, 1, -1], [0.5, 1.25, 2.0, float("inf")]) == [
        ("val\ntench", "n01440764", False), ("d=0.5\ntench", "n01440764", True),
        ("d=1.25\nn09999999", "n09999999", False),       # no name: the WNID says which
        ("d=2\nEnglish springer", "n02102040", False)]
    assert class_labels({"classes": ["n01440764"]}) == [("", "n01440764")]   # older manifests


def test_a_run_without_a_checkpoint_gets_its_curves(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "metrics.jsonl", run)
    assert main(["figures", str(run), "--device", "cpu"]) == 0
    assert [p.name for p in (run / "figures").iterdir()] == ["curves.png"]
    assert "filters.png and neighbours.png need a checkpoint" in capsys.readouterr().err


def test_figures_say_which_shards_the_neighbours_come_from(shards, run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("figures"))
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"event": "data", "path": str(shards)}) + "\n")
    assert main(["figures", str(run), "--queries", "1", "--scan", "5", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert (f"no --data: the nearest-neighbour figure searches the shards the run trained on, "
            f"{shards} (from metrics.jsonl)") in err
    assert (run / "figures" / "neighbours.png").is_file()
