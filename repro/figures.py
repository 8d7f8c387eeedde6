"""`repro figures RUN_DIR`: the paper's Figure 3 (first-layer kernels), Figure 4 (val, or
test, images: their top-5 labels, and their nearest training images in the last hidden
layer), and training curves, as PNGs in RUN_DIR/figures (and in the run's W&B run when it
used one). The PNGs are drawn in memory and written together (repro.evaluate.write_outputs):
a full disk leaves the earlier ones as they were."""
from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
# Figure objects without pyplot: no global backend or GUI, PNGs are drawn by Agg.
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from data_prep.progress import Progress
from data_prep.image import IMAGE_SIZE
from repro.augment import eval_views
from repro.cli import count, positive
from repro.data.loader import loader
from repro.data.order import in_order
from repro.data.shards import read_manifest, split_shards
from repro.distributed import pick_device
from repro.evaluate import (EvalError, Member, check_members, default_checkpoint, load_member,
                            stats_path, write_outputs)
from repro.tracking import read_metrics, warn

PER_ROW, SCALE, GAP, TOWER_GAP = 16, 4, 2, 8   # Figure 3 layout: pixels are kernel pixels * SCALE
TITLE_H = 24           # pixels above Figure 3's grid for its title
PICK_SCAN = 1000       # images Figure 4 (left) looks through for different classes


def filter_grid(weight: np.ndarray, towers: int) -> np.ndarray:
    """(N,3,k,k) kernels -> uint8 RGB image: one block per tower (the paper's GPU 1 above
    GPU 2), PER_ROW kernels a row, each kernel min-max scaled to [0, 1] on its own."""
    n, _, k, _ = weight.shape
    per_tower = n // towers
    rows, cell = math.ceil(per_tower / PER_ROW), k * SCALE
    block_h = rows * cell + (rows - 1) * GAP
    grid = np.full((towers * block_h + (towers - 1) * TOWER_GAP,
                    PER_ROW * cell + (PER_ROW - 1) * GAP, 3), 255, np.uint8)
    for i, w in enumerate(weight):
        lo, hi = w.min(), w.max()
        w = (w - lo) / (hi - lo) if hi > lo else np.full_like(w, 0.5)
        tile = np.kron(w.transpose(1, 2, 0), np.ones((SCALE, SCALE, 1)))
        tower, j = divmod(i, per_tower)
        y = tower * (block_h + TOWER_GAP) + (j // PER_ROW) * (cell + GAP)
        x = (j % PER_ROW) * (cell + GAP)
        grid[y:y + cell, x:x + cell] = np.round(tile * 255).astype(np.uint8)
    return grid


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def filters_png(member: Member) -> bytes:
    """Figure 3: the kernel grid pixel for pixel (figimage, unscaled), a title above it."""
    weight = member.model.conv1.weight.detach().float().cpu().numpy()
    # conv1 itself is not grouped, but its first half of kernels feeds tower 1 (conv2 groups=2).
    towers = member.cfg.model.groups if len(weight) % member.cfg.model.groups == 0 else 1
    grid = filter_grid(weight, towers)
    h, w = grid.shape[:2]
    fig = Figure(figsize=(w / 100, (h + TITLE_H) / 100), dpi=100)
    fig.figimage(grid, 0, 0)
    n, _, k, _ = weight.shape
    fig.text(0.5, 1 - TITLE_H / 2 / (h + TITLE_H), f"The {n} first-layer kernels, {k}x{k}x3 "
             f"(Figure 3){': tower 1 above, tower 2 below' if towers == 2 else ''}",
             ha="center", va="center", fontsize=9)
    return png(fig)


@torch.no_grad()
def fc7(member: Member, images: torch.Tensor) -> torch.Tensor:
    """The last hidden layer (fc7 after its ReLU) for whole images' centre crops (uint8 on
    the device), in eval mode, fed as validation and `repro eval` feed the model
    (Normalizer.eval_input)."""
    out = {}
    hook = member.model.fc7.register_forward_hook(lambda mod, inp, o: out.update(fc7=o))
    x = member.normalizer.eval_input(images, member.cfg.data.crop_size)
    try:
        with member.placed.autocast():
            member.model(x)
    finally:
        hook.remove()
    return F.relu(out["fc7"].float())


def nearest_neighbours(member: Member, data_dir: Path, queries: int, scan: int, k: int = 6,
                       split: str = "val"):
    """The first `queries` images of `split` (val or test) and, for each, the k training
    images nearest in fc7 by Euclidean distance, over the whole training split (scan 0) or
    its first `scan` images, streamed with a running top-k (no feature cache): (query
    images, labels),
    (neighbours (Q,k,3,S,S), their labels, distances); the images are the centre crops
    the model saw."""
    cfg, dev = member.cfg, member.normalizer.device
    y, x, _ = eval_views(IMAGE_SIZE, cfg.data.crop_size, ten_crop=False)[0]

    def batches(split, limit, size, progress="off"):
        plan = in_order(split_shards(data_dir, split), size, max(1, cfg.data.workers), limit)
        with Progress(plan.total, "neighbours: training images searched", "img", progress) as bar:
            for batch in loader(plan):
                centre = batch.images[:, :, y:y + cfg.data.crop_size, x:x + cfg.data.crop_size]
                yield batch.device_images(dev), centre, batch.labels
                bar.update(len(batch.labels))

    q_whole, q_img, q_lab = next(batches(split, queries, queries))
    q_feat = fc7(member, q_whole)
    n = len(q_img)
    best_d = torch.full((n, k), math.inf, device=dev)
    best_img = torch.zeros((n, k, *q_img.shape[1:]), dtype=torch.uint8)
    best_lab = torch.full((n, k), -1, dtype=torch.long)
    for whole, images, labels in batches("train", scan, cfg.data.val_batch_size, "auto"):
        # Direct differences: the matmul shortcut loses the ~1e-2 gaps between fc7 vectors
        # of length ~20 to fp32 cancellation.
        dist = torch.cdist(q_feat, fc7(member, whole), compute_mode="donot_use_mm_for_euclid_dist")
        d = torch.cat([best_d, dist], 1)
        best_d, idx = d.topk(min(k, d.shape[1]), dim=1, largest=False)
        idx = idx.cpu()
        for q in range(n):
            best_img[q] = torch.cat([best_img[q], images])[idx[q]]
            best_lab[q] = torch.cat([best_lab[q], labels])[idx[q]]
    return (q_img, q_lab), (best_img, best_lab, best_d.cpu())


def pick_images(data_dir: Path, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` whole images of `split` of `count` different classes (the first of each, in
    shard order) where its first PICK_SCAN images hold that many classes; else its first
    `count` images. (images, labels)."""
    plan = in_order(split_shards(data_dir, split), count, 1, PICK_SCAN)
    first, per_class = None, {}
    for batch in loader(plan):
        first = first or (batch.images, batch.labels)
        for image, label in zip(batch.images, batch.labels.tolist()):
            per_class.setdefault(label, image)
        if len(per_class) >= count:
            labels = list(per_class)[:count]
            return torch.stack([per_class[c] for c in labels]), torch.tensor(labels)
    return first


@torch.no_grad()
def top5_predictions(member: Member, data_dir: Path, count: int = 8, split: str = "val"):
    """pick_images' images of `split`, their labels, and the five most probable classes of
    each with their probabilities, by the paper's ten-crop test."""
    images, labels = pick_images(data_dir, split, count)
    probs = member.probs(images.to(member.normalizer.device), ten_crop=True).cpu()
    values, indices = probs.topk(min(5, probs.shape[1]), dim=1)
    return images, labels, values, indices


def predictions_png(member: Member, data_dir: Path, split: str, count: int = 8) -> bytes:
    """Figure 4, left: each image over its five most probable labels as bars (the true
    label's bar in red, as the paper marks it), its true label over the image."""
    names = [name or wnid for name, wnid in class_labels(read_manifest(data_dir))]
    images, labels, values, indices = top5_predictions(member, data_dir, count, split)
    cols = min(4, len(images))
    rows = -(-len(images) // cols)
    fig = Figure(figsize=(3.2 * cols, 4.4 * rows))
    grid = fig.add_gridspec(2 * rows, cols, height_ratios=[3, 1.4] * rows)
    for i, (img, label, vs, ix) in enumerate(zip(images, labels, values, indices)):
        r, c = divmod(i, cols)
        ax = fig.add_subplot(grid[2 * r, c])
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_axis_off()
        ax.set_title(names[label], fontsize=8)
        bars = fig.add_subplot(grid[2 * r + 1, c])
        colours = ["tab:red" if j == label else "tab:blue" for j in ix.tolist()]
        bars.barh(range(len(vs)), vs.tolist(), color=colours)
        bars.set_yticks(range(len(vs)), [names[j][:28] for j in ix.tolist()], fontsize=7)
        bars.invert_yaxis()
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=6)
    fig.suptitle(f"{split.capitalize()} images (their class above them) and their five most "
                 f"probable labels, 10 crops (Figure 4, left); a red bar is the true class",
                 fontsize=9)
    fig.tight_layout()
    return png(fig)


def class_labels(manifest: dict) -> list[tuple[str, str]]:
    """(name, WNID) of each class: the manifest's first word for it ("tench"), or "" for
    shards built before the manifest kept the names, or from a source without them."""
    names = manifest.get("words") or [""] * len(manifest["classes"])
    return [(name.split(",")[0].strip(), wnid) for name, wnid in zip(names, manifest["classes"])]


def row_labels(labels: list[tuple[str, str]], query: int, neighbours, dists,
               split: str = "val") -> list[tuple]:
    """(title, WNID, same class as the query) for a row of Figure 4: the val (or test)
    image, then each neighbour with its distance."""
    def title(head: str, c: int) -> str:
        return f"{head}\n{labels[c][0] or labels[c][1]}"
    row = [(title(split, query), labels[query][1], False)]
    row += [(title(f"d={d:.3g}", int(c)), labels[c][1], int(c) == query)
            for c, d in zip(neighbours, dists) if c >= 0]
    return row


def neighbours_png(member: Member, data_dir: Path, queries: int, scan: int, split: str) -> bytes:
    labels = class_labels(read_manifest(data_dir))
    (q_img, q_lab), (n_img, n_lab, n_dist) = nearest_neighbours(member, data_dir, queries, scan,
                                                                split=split)
    rows, cols = len(q_img), 1 + n_img.shape[1]
    fig = Figure(figsize=(1.6 * cols, 1.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        images = [q_img[r], *n_img[r]]
        for ax in axes[r]:
            ax.axis("off")
        for ax, img, (title, wnid, same) in zip(axes[r], images, row_labels(
                labels, int(q_lab[r]), n_lab[r].tolist(), n_dist[r].tolist(), split)):
            ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=7, color="green" if same else "black", pad=8)
            ax.text(0.5, 1.01, wnid, fontsize=5, color="0.4", ha="center", va="bottom",
                    transform=ax.transAxes)         # small, between the name and the image
            if same:           # a frame: readable without colour too
                ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False,
                                       edgecolor="green", linewidth=3, clip_on=False))
    fig.suptitle(f"{split.capitalize()} images (left) and the training images nearest in fc7 "
                 f"(Figure 4); framed in green: the {split} image's class", fontsize=9)
    return png(fig)


def curves_png(metrics: list[dict]) -> bytes:
    """Train loss, train/val top-1 error and the learning rate against the global step.
    A resumed run logs some steps twice; the last record of a step wins."""
    train = {r["global_step"]: r for r in metrics if r.get("event") == "train"}
    val = {r["global_step"]: r for r in metrics if r.get("event") == "val"}
    fig = Figure(figsize=(13, 3.6))
    a_loss, a_err, a_lr = fig.subplots(1, 3)
    steps = sorted(train)
    a_loss.plot(steps, [train[s]["loss"] for s in steps])
    a_loss.set(title="train loss", xlabel="step", ylabel="cross-entropy")
    a_err.plot(steps, [train[s]["top1_err"] for s in steps], label="train top-1 (batches)")
    vsteps = sorted(val)
    a_err.plot(vsteps, [val[s]["top1_err"] for s in vsteps], "o-", label="val top-1 (centre)")
    a_err.plot(vsteps, [val[s]["top5_err"] for s in vsteps], "s--", label="val top-5 (centre)")
    a_err.set(title="error", xlabel="step", ylabel="%")
    a_err.legend(fontsize=8)
    a_lr.plot(steps, [train[s]["lr"] for s in steps])
    a_lr.set(title="learning rate", xlabel="step", yscale="log")
    for s in vsteps:  # epoch boundaries
        for ax in (a_loss, a_err, a_lr):
            ax.axvline(s, color="0.85", lw=0.8, zorder=0)
    fig.tight_layout()
    return png(fig)


def log_to_wandb(run_dir: Path, member: Member, paths: list[Path]) -> None:
    """Add the figures to the run's W&B run, if it had one; never fail because of W&B."""
    log, id_file = member.cfg.logging, run_dir / "wandb_id.txt"
    if log.wandb == "disabled" or not id_file.is_file():
        return
    try:
        import wandb
        run = wandb.init(project=log.project, entity=log.entity or None,
                         id=id_file.read_text().strip(), resume="allow", mode=log.wandb,
                         dir=str(run_dir))
        run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in paths})
        run.finish()
    except Exception as e:  # noqa: BLE001 - the PNGs are written; W&B is a copy
        warn("figures not logged to W&B", e)


def make_figures(run_dir: str | Path, data_dir: str | Path | None = None,
                 checkpoint: str | Path | None = None, queries: int = 5, scan: int = 0,
                 device: str = "auto", split: str = "val") -> list[Path]:
    """Write RUN_DIR/figures/{filters,predictions,neighbours,curves}.png; predictions and
    neighbours need the shards, and show images of their `split` (val, or test where the
    shards have one). A run without a checkpoint yet gets its curves, and is told what
    needs one."""
    run_dir = Path(run_dir)
    out = run_dir / "figures"
    if checkpoint is None and (run_dir / "metrics.jsonl").is_file():
        try:
            checkpoint = default_checkpoint(run_dir)
        except EvalError as e:
            print(f"no checkpoint ({e}): drawing the curves only; filters.png and "
                  f"neighbours.png need a checkpoint (--checkpoint, or once the run has "
                  f"saved one)", file=sys.stderr)
            write_outputs({out / "curves.png": curves_png(read_metrics(run_dir))})
            return [out / "curves.png"]
    stats = stats_path(Path(data_dir)) if data_dir is not None else None
    member = load_member(checkpoint or default_checkpoint(run_dir), stats, pick_device(device))
    if data_dir is not None:      # refused before anything is drawn
        data_dir = Path(data_dir)
        check_members([member], data_dir)
        split_shards(data_dir, split)
    files = {out / "filters.png": filters_png(member)}
    if data_dir is not None:
        files[out / "predictions.png"] = predictions_png(member, data_dir, split)
        files[out / "neighbours.png"] = neighbours_png(member, data_dir, queries, scan, split)
    if (run_dir / "metrics.jsonl").is_file():
        files[out / "curves.png"] = curves_png(read_metrics(run_dir))
    write_outputs(files)
    log_to_wandb(run_dir, member, list(files))
    return list(files)


# ---- `repro figures`' options (repro.cli runs it) ------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data", help="shard directory (needed for the nearest-neighbour figure)")
    p.add_argument("--checkpoint", help="default RUN_DIR/checkpoints/best.pt (else last.pt)")
    p.add_argument("--queries", type=positive, default=5,
                   help="val (or test) images in the neighbour figure")
    p.add_argument("--scan", type=count, default=0,
                   help="training images searched for neighbours: 0 (default) the whole "
                        "training split, as the paper; N the first N in shard order (quicker)")
    p.add_argument("--split", default="val", choices=("val", "test"),
                   help="Figure 4's images: val, or test where the shards have labelled test "
                        "images (ILSVRC-2010, whose test images the paper's Figure 4 shows)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
