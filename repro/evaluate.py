"""`repro eval`: top-1/top-5 error on the val shards, centre crop or the paper's 10 crops,
one checkpoint or the paper's averaged ensemble (section 6, Table 2).

The val images come whole (256x256) from the loader; the crops are cut on the
device, all crops of a batch in one forward pass. Each crop has the mean image
subtracted at its own window (mirrored with it), as in training. The softmax
is averaged over the crops, then over the models.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_prep.atomic import write_set
from data_prep.manifest import MANIFEST, STATS
from data_prep.progress import Progress
from repro import checkpoint
from repro.augment import Normalizer
from repro.cli import count
from repro.config import Config, config_from_dict
from repro.data.loader import loader
from repro.data.order import in_order
from repro.data.shards import data_fingerprint, read_manifest, split_shards
from repro.distributed import pick_device
from repro.exits import ReproError
from repro.metrics import ranked_hits
from repro.placement import Placed, make_normalizer, place_model


class EvalError(ReproError, ValueError):
    """A checkpoint or data set that cannot be evaluated as asked (the message says why)."""


def default_checkpoint(run_dir: str | Path) -> Path:
    """The run's best checkpoint (lowest centre-crop val error), else its last; a best.pt
    whose bytes its digest file does not list is passed over for last.pt, with a warning."""
    ckpts = Path(run_dir) / "checkpoints"
    best, last = ckpts / "best.pt", ckpts / "last.pt"
    if best.is_file():
        try:
            checkpoint.verify(best)
            return best
        except checkpoint.CheckpointError as e:
            if not last.is_file():
                raise
            print(f"warning: {e}; using {last} instead", file=sys.stderr, flush=True)
    if last.is_file():
        return last
    raise EvalError(f"{ckpts}: no best.pt or last.pt (has `repro train --out {run_dir}` run?)")


def stats_path(data_dir: Path) -> Path:
    """DIR/stats.npz, checked against the sha256 its manifest records (ShardsError)."""
    stats = Path(data_dir) / STATS
    if not stats.is_file():
        raise EvalError(f"{stats}: missing (the mean image is needed to preprocess like training)")
    data_fingerprint(data_dir)
    return stats


@dataclass
class Member:
    """One model of an ensemble, with the preprocessing it was trained with."""
    path: Path
    cfg: Config
    placed: Placed                    # in eval mode (repro.placement)
    classes: list | None              # None: a checkpoint that does not say (not one of ours)
    normalizer: Normalizer | None     # None when loaded without the shards' stats.npz
    data: dict | None = None          # the data_fingerprint of its training shards, if recorded

    @property
    def model(self) -> torch.nn.Module:
        return self.placed.model

    @torch.no_grad()
    def probs(self, images: torch.Tensor, ten_crop: bool) -> torch.Tensor:
        """uint8 (B,3,256,256) on the device -> (B, classes) softmax averaged over the crops."""
        x = self.normalizer.eval_input(images, self.cfg.data.crop_size, ten_crop)
        with self.placed.autocast():   # members may differ
            logits = self.model(x)
        return logits.float().softmax(1).view(-1, len(images), logits.shape[1]).mean(0)


def checkpoint_file(path: str | Path) -> Path:
    """`path` if it is a file; EvalError if it is missing, or a directory (naming the
    checkpoint it most likely means: a run's, or a checkpoints folder's, best.pt)."""
    path = Path(path)
    if path.is_dir():
        holds = path.name == "checkpoints" or any(path.glob("*.pt"))    # else a run's dir
        ckpts = path if holds else path / "checkpoints"
        best = ckpts / "best.pt"
        meant = best if best.is_file() or not (ckpts / "last.pt").is_file() else ckpts / "last.pt"
        raise EvalError(f"{path}: is a directory; give a checkpoint file, e.g. {meant}")
    if not path.is_file():
        raise EvalError(f"{path}: checkpoint not found")
    return path


def load_member(path: str | Path, stats: Path | None, device: torch.device) -> Member:
    path = checkpoint_file(path)
    state = checkpoint.load(path, keys=("config", "model"))   # CheckpointError if unusable
    cfg = config_from_dict(state["config"], where=str(path))
    try:
        placed = place_model(cfg, device, training=False, state=state["model"])
    except (RuntimeError, TypeError, AttributeError) as e:   # missing, extra or resized weights
        lines = str(e).splitlines()
        detail = (lines[1:] or lines)[0].strip()      # past "Error(s) in loading state_dict"
        raise EvalError(f"{path}: its weights do not fit the model its config describes "
                        f"({detail}{' ...' if len(lines) > 2 else ''})") from None
    normalizer = make_normalizer(cfg, stats, device, training=False) if stats is not None else None
    return Member(path, cfg, placed, state.get("classes"), normalizer, state.get("data"))


def check_members(members: list[Member], data_dir: Path) -> None:
    """Refuse an ensemble whose members disagree, or a model trained on other classes; warn
    about a model trained with another mean image and PCA (stats.npz) than these shards'."""
    classes, manifest_path = read_manifest(data_dir)["classes"], Path(data_dir) / MANIFEST
    counts = {str(m.path): m.cfg.model.num_classes for m in members}
    if len(set(counts.values())) > 1:
        raise EvalError("ensemble members differ in model.num_classes: "
                        + ", ".join(f"{p} has {n}" for p, n in counts.items()))
    for m in members:
        if m.cfg.model.num_classes != len(classes):
            raise EvalError(f"{m.path} has model.num_classes = {m.cfg.model.num_classes} but "
                            f"{manifest_path} lists {len(classes)} classes")
        if m.classes is not None and list(m.classes) != list(classes):
            i = next(i for i, (a, b) in enumerate(zip(m.classes, classes)) if a != b)
            raise EvalError(f"{m.path} was trained on other classes than {manifest_path}: "
                            f"class {i} is {m.classes[i]} in the checkpoint, {classes[i]} "
                            f"in the shards")
    stats = data_fingerprint(data_dir)["stats_sha256"]
    for m in members:
        if (m.data or {}).get("stats_sha256", stats) != stats:
            print(f"warning: {m.path} was trained with another stats.npz than "
                  f"{Path(data_dir) / STATS}: its input is normalised with another mean image "
                  f"than in training", file=sys.stderr, flush=True)


def ensemble_probs(members: list[Member], images: torch.Tensor, ten_crop: bool) -> torch.Tensor:
    """The paper's ensemble: the members' softmax outputs, averaged."""
    return torch.stack([m.probs(images, ten_crop) for m in members]).mean(0)


@dataclass
class EvalResult:
    checkpoints: list[str]
    classes: list[str]
    crops: int
    split: str                     # val, or test (ILSVRC-2010's labelled test set: Table 1)
    confusion: np.ndarray          # (C, C): rows true class, columns top-1 prediction
    top5_hits: np.ndarray          # (C,): images of each class with the label in the top 5

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    def summary(self) -> dict:
        n = max(self.n, 1)
        return {"top1_err": 100 * (1 - np.trace(self.confusion) / n),
                "top5_err": 100 * (1 - self.top5_hits.sum() / n),
                "n": self.n, "crops": self.crops, "checkpoints": self.checkpoints,
                "split": self.split}


def evaluate(checkpoints: list[str | Path], data_dir: str | Path, ten_crop: bool = False,
             batch_size: int = 0, device: str = "auto", workers: int = 0,
             limit: int = 0, split: str = "val", progress: str = "auto") -> EvalResult:
    """Evaluate one checkpoint, or several as an averaged ensemble, on the val (or test)
    split. batch_size / workers 0: the first checkpoint's data.val_batch_size / data.workers;
    progress: a data_prep.progress mode."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    dev = pick_device(device)
    stats = stats_path(data_dir)
    members = [load_member(p, stats, dev) for p in checkpoints]
    classes = manifest["classes"]
    check_members(members, data_dir)
    first = members[0].cfg.data
    plan = in_order(split_shards(data_dir, split), batch_size or first.val_batch_size,
                    workers or max(1, first.workers), limit=limit)
    c = len(classes)
    confusion, top5_hits = torch.zeros(c * c, dtype=torch.long), torch.zeros(c, dtype=torch.long)
    desc = f"eval ({10 if ten_crop else 1} crop{'s' * ten_crop})"
    with Progress(plan.total, desc, "img", progress) as bar:
        for batch in loader(plan, pin_memory=dev.type == "cuda"):
            labels = batch.labels
            probs = ensemble_probs(members, batch.device_images(dev), ten_crop).cpu()
            top5, hits = ranked_hits(probs, labels, 5)
            confusion += torch.bincount(labels * c + top5[:, 0], minlength=c * c)
            top5_hits += torch.bincount(labels[hits.any(1)], minlength=c)
            bar.update(len(labels))
    return EvalResult([str(p) for p in checkpoints], classes, 10 if ten_crop else 1, split,
                      confusion.view(c, c).numpy(), top5_hits.numpy())


def write_breakdown(result: EvalResult, out_dir: str | Path, worst: int = 10,
                    confusions: int = 3) -> list[Path]:
    """eval.json (the summary), per_class.csv, and the commonest wrong answers for the
    `worst` classes with the highest top-1 error (worst_confusions.csv / .json)."""
    counts = result.confusion.sum(1)
    seen = np.maximum(counts, 1)
    top1_err = 100 * (1 - np.diag(result.confusion) / seen)
    top5_err = 100 * (1 - result.top5_hits / seen)
    per_class = io.StringIO(newline="")
    w = csv.writer(per_class)
    w.writerow(["class", "wnid", "n", "top1_err", "top5_err"])
    for i, wnid in enumerate(result.classes):
        w.writerow([i, wnid, int(counts[i]), f"{top1_err[i]:.2f}", f"{top5_err[i]:.2f}"])
    rows = []
    order = [i for i in np.argsort(-top1_err, kind="stable") if counts[i]][:worst]
    for i in order:
        wrong = result.confusion[i].copy()
        wrong[i] = 0
        for j in np.argsort(-wrong, kind="stable")[:confusions]:
            if wrong[j]:
                rows.append({"wnid": result.classes[i], "class": int(i), "n": int(counts[i]),
                             "top1_err": round(float(top1_err[i]), 2),
                             "predicted_wnid": result.classes[j], "predicted": int(j),
                             "count": int(wrong[j])})
    worst_csv = io.StringIO(newline="")
    w = csv.DictWriter(worst_csv, fieldnames=["wnid", "class", "n", "top1_err", "predicted_wnid",
                                              "predicted", "count"])
    w.writeheader()
    w.writerows(rows)
    out = Path(out_dir)
    files = {out / "eval.json": json.dumps(result.summary(), indent=1) + "\n",
             out / "per_class.csv": per_class.getvalue(),
             out / "worst_confusions.csv": worst_csv.getvalue(),
             out / "worst_confusions.json": json.dumps(rows, indent=1) + "\n"}
    write_outputs({path: text.encode() for path, text in files.items()})
    return list(files)


def write_outputs(files: dict[Path, bytes]) -> None:
    """Write result files together (data_prep.atomic.write_set): a failed write leaves the
    previous ones as they were. A full disk is checkpoint.NoSpace (exit 74), as in training."""
    try:
        for directory in {p.parent for p in files}:
            directory.mkdir(parents=True, exist_ok=True)
        write_set(files)
    except OSError as e:
        where = e.filename or next(iter(files))
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise checkpoint.NoSpace(f"no space left on device while writing {where}; "
                                     f"no earlier file was replaced") from None
        raise EvalError(f"{where}: cannot write ({e.strerror or e})") from None


def format_result(summary: dict) -> str:
    k = len(summary["checkpoints"])
    models = "1 checkpoint" if k == 1 else f"an ensemble of {k} checkpoints"
    return (f"top-1 error {summary['top1_err']:.2f}%  top-5 error {summary['top5_err']:.2f}%  "
            f"({summary['n']} {summary['split']} images, {summary['crops']} "
            f"crop{'s' * (summary['crops'] > 1)}, "
            f"{models})")


# ---- `repro eval`'s options (repro.cli runs it) --------------------------------------------
def add_eval_options(p) -> None:
    """The options of an eval that `repro eval` and `repro report` share."""
    p.add_argument("--batch-size", type=count, default=0,
                   help="val images a batch (x10 crops); 0 = the checkpoint's data.val_batch_size")
    p.add_argument("--limit", type=count, default=0, help="only the first N images (0 = all)")
    p.add_argument("--split", default="val", choices=("val", "test"),
                   help="the shards' split: val, or test where the shards have labelled test "
                        "images (ILSVRC-2010, the paper's Table 1)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", action="append", required=True,
                   help="a checkpoint; repeat for the paper's averaged ensemble")
    p.add_argument("--data", required=True, help="shard directory (its val split, stats.npz)")
    p.add_argument("--ten-crop", action="store_true",
                   help="the paper's 10 crops (corners, centre, mirrored) instead of the centre")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--out", help="directory for eval.json, per_class.csv, worst_confusions.*")
    p.add_argument("--worst", type=count, default=10, help="classes in worst_confusions")
    p.add_argument("--workers", type=count, default=0,
                   help="loader processes; 0 = the checkpoint's data.workers")
    add_eval_options(p)
