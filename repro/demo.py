"""`repro demo`: the whole pipeline on a generated fake ImageNet, on whatever device is there.

fixture (official archives, with ImageNet's odd files) -> shards -> train (configs/smoke.yaml:
the paper's model unchanged, a few short epochs) -> 10-crop eval -> report -> figures,
everything under --out. The fixture has so few images and steps that the errors stay
near chance: the demo shows the pipeline working, not AlexNet's accuracy.

Run again in the same --out, the demo skips what is done: the fixture, the shards, a
finished training run, and the eval and figures when they are newer than the checkpoint
they show (the report, a markdown file, is written again). If the sizes differ from the
last run's (--out/demo.json), it first deletes its own outputs, and nothing else.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from data_prep.build_shards import build_shards
from data_prep.make_fixture import make_fixture
from repro.config import load_config, packaged_config
from repro.evaluate import default_checkpoint, evaluate, format_result, write_breakdown
from repro.figures import make_figures
from repro.report import write_report
from repro.imagenet import train

SIZES = {  # --fast: the test suite's end-to-end run
    "default": {"classes": 10, "train_per_class": 20, "val_per_class": 5, "epochs": 3,
                "steps_per_epoch": 4, "scan": 256, "queries": 5},
    "fast": {"classes": 4, "train_per_class": 6, "val_per_class": 2, "epochs": 1,
             "steps_per_epoch": 2, "scan": 24, "queries": 3},
}
OUTPUTS = ("fixture", "shards", "run", "eval")   # what the demo owns under --out
DATA_KEYS = ("classes", "train_per_class", "val_per_class", "epochs", "steps_per_epoch", "seed")


def claim(out: Path, settings: dict) -> None:
    """Start afresh (deleting only the demo's own outputs) if the sizes changed."""
    record = out / "demo.json"
    wanted = {k: settings[k] for k in DATA_KEYS}
    if record.is_file() and json.loads(record.read_text()) != wanted:
        print(f"{record}: other sizes than last time; removing "
              + ", ".join(f"{out / d}" for d in OUTPUTS if (out / d).exists()), flush=True)
        for d in OUTPUTS:
            shutil.rmtree(out / d, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(wanted, indent=1) + "\n")


def stage(n: int, text: str) -> None:
    print(f"\n[{n}/6] {text}", flush=True)


def done(outputs: list[Path], inputs: list[Path]) -> bool:
    """Whether every output exists and was written after every input was."""
    newest = max(p.stat().st_mtime for p in inputs)
    return all(p.is_file() and p.stat().st_mtime >= newest for p in outputs)


def run_demo(out: str | Path, device: str = "auto", fast: bool = False, **sizes) -> dict:
    """The pipeline into `out`; `sizes` override SIZES entries (None = keep). Returns paths
    and the eval summary."""
    t0 = time.time()
    out = Path(out)
    s = SIZES["fast" if fast else "default"] | {"seed": 0}
    s |= {k: v for k, v in sizes.items() if v is not None}
    claim(out, s)
    fixture, shards, run = out / "fixture", out / "shards", out / "run"

    stage(1, f"fixture: {s['classes']} classes in the official ILSVRC2012 layout, with quirks")
    if (fixture / "fixture.json").is_file():
        print(f"{fixture} exists: kept")
    else:
        make_fixture(fixture, "official", s["classes"], s["train_per_class"],
                     s["val_per_class"], quirks=True, seed=s["seed"])
    stage(2, "shards: python -m data_prep.build_shards")
    manifest = build_shards(fixture, shards, progress="off")

    stage(3, "train: configs/smoke.yaml (the paper's model, briefly)")
    cfg = load_config(packaged_config("smoke"), [
        f"model.num_classes={len(manifest['classes'])}", f"schedule.epochs={s['epochs']}",
        f"data.steps_per_epoch={s['steps_per_epoch']}", f"train.device={device}",
        # A checkpoint is ~455 MB: keep last.pt (a rerun's "already finished") and best.pt
        # (the eval's), no older step files.
        "checkpoint.keep_last=1"])
    status = train(cfg, shards, run)
    if status:               # the trainer's own status (repro.exits): 75 stopped, 3 non-finite
        print(f"demo: training stopped with status {status}; see {run / 'metrics.jsonl'}",
              file=sys.stderr)
        raise SystemExit(status)

    stage(4, "eval: 10 crops, softmax averaged")
    ckpt = default_checkpoint(run)
    summary = ten_crop_eval(ckpt, shards, out / "eval", device)

    stage(5, "report")
    report = write_report(run, [summary])
    print("\n".join(line for line in report.read_text().splitlines() if line.startswith("|")))

    stage(6, "figures")
    figures = figures_of(run, shards, ckpt, s, device)
    paths = {"fixture": fixture, "shards": shards, "run": run, "checkpoint": ckpt,
             "eval": out / "eval", "report": report, "figures": run / "figures"}
    print("\n" + "\n".join(f"{k:>10}: {v}" for k, v in paths.items()))
    print(f"\n{', '.join(p.name for p in figures)} in {run / 'figures'}; "
          f"demo done in {time.time() - t0:.0f} s")
    return {"paths": paths, "summary": summary, "figures": figures}


def ten_crop_eval(ckpt: Path, shards: Path, out: Path, device: str) -> dict:
    """The eval summary: kept when out/eval.json is newer than the checkpoint and of it."""
    evaluated = out / "eval.json"
    summary = json.loads(evaluated.read_text()) if done([evaluated], [ckpt]) else {}
    if summary.get("checkpoints") == [str(ckpt)]:
        print(f"{evaluated} is newer than {ckpt}: kept")
    else:
        result = evaluate([ckpt], shards, ten_crop=True, device=device)
        summary = result.summary()
        write_breakdown(result, out)
    print(format_result(summary))
    return summary


def figures_of(run: Path, shards: Path, ckpt: Path, s: dict, device: str) -> list[Path]:
    """The run's figures: kept when newer than the checkpoint and the records."""
    figures = [run / "figures" / f"{name}.png"
               for name in ("filters", "predictions", "neighbours", "curves")]
    if done(figures, [ckpt, run / "metrics.jsonl"]):
        print(f"{run / 'figures'} is newer than {ckpt}: kept")
        return figures
    return make_figures(run, shards, ckpt, queries=s["queries"], scan=s["scan"], device=device)


# ---- `repro demo`'s options (repro.cli runs it) --------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--out", default="demo_out", help="working directory (default ./demo_out)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--fast", action="store_true", help="the smallest sizes (the test suite's)")
    p.add_argument("--classes", type=int)
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--val-per-class", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
