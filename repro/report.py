"""`repro report RUN_DIR`: a markdown table of a run's numbers beside the paper's, and the
settings in which the run differs from the paper's recipe (configs/alexnet_paper.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from repro.ablations import CLAIMS, ablation_table, config_path
from repro.config import (KEPT_ON_RESUME, MAY_CHANGE_ON_RESUME, Config, load_config,
                          packaged_config)
from repro.evaluate import add_eval_options, write_outputs
from repro.exits import ReproError
from repro.tracking import best_val, read_metrics

PAPER_CONFIG = packaged_config("alexnet_paper")


@dataclass(frozen=True)
class Anchor:
    model: str
    top1_err: float | None   # None: not published
    top5_err: float | None
    source: str
    delta: bool = False      # the numbers are a difference to another row, not an error


# ILSVRC-2012 val unless said otherwise; each row names its source. * = pre-trained on
# the Fall 2011 release with a sixth conv layer, then fine-tuned (section 6).
ANCHORS = (
    Anchor("paper: 1 CNN, 10 crops", 40.7, 18.2, "paper Table 2"),
    Anchor("paper: 5 CNNs averaged, 10 crops", 38.1, 16.4, "paper Table 2"),
    Anchor("paper: 1 CNN*, 10 crops", 39.0, 16.6, "paper Table 2"),
    Anchor("paper: 7 CNNs* averaged (two CNNs* with the five CNNs)", 36.7, 15.4, "paper Table 2"),
    Anchor("paper: 5 CNNs averaged, ILSVRC-2012 test", None, 16.4, "paper Table 2"),
    Anchor("paper: 7 CNNs* averaged, ILSVRC-2012 test", None, 15.3, "paper Table 2"),
    Anchor("SIFT + FVs (Sánchez & Perronnin), ILSVRC-2012 test", None, 26.2, "paper Table 2"),
    Anchor("paper: 1 CNN, ILSVRC-2010 test", 37.5, 17.0, "paper Table 1"),
    Anchor("Sparse coding (Berg et al.), ILSVRC-2010 test", 47.1, 28.2, "paper Table 1"),
    Anchor("SIFT + FVs (Sánchez & Perronnin), ILSVRC-2010 test", 45.7, 25.7, "paper Table 1"),
    Anchor("paper: one-GPU net (half kernels), change vs the two-GPU net",
           CLAIMS["one_gpu_half_kernels"]["top1"], CLAIMS["one_gpu_half_kernels"]["top5"],
           f"paper {CLAIMS['one_gpu_half_kernels']['source']}", delta=True),
    Anchor("cuda-convnet2 one-GPU net, multi-view", 40.42, 18.15, "cuda-convnet2 wiki"),
    Anchor("Caffe bvlc_alexnet, centre crop", 42.9, 19.8, "BVLC/caffe models/bvlc_alexnet"),
    Anchor("torchvision alexnet, centre crop", 43.48, 20.93, "torchvision docs"),
    Anchor("PyTorch reproduction without LRN/groups, 10 crops", 41.2, 18.2,
           "longrootchen/alexnet-imagenet-pytorch"),
)


def flat(cfg: Config) -> dict:
    return {f"{section}.{key}": value
            for section, body in cfg.to_dict().items() for key, value in body.items()}


def differences(run: Config, paper: Config) -> list[tuple[str, object, object]]:
    """(dotted key, run value, paper value) for every setting that differs."""
    a, b = flat(run), flat(paper)
    return [(key, a[key], b[key]) for key in a if a[key] != b[key]]


def training_summary(metrics: list[dict]) -> dict:
    """Epochs and steps done, and the best centre-crop val error seen during training."""
    val = [r for r in metrics if r.get("event") == "val"]
    steps = [r["global_step"] for r in metrics if "global_step" in r]
    return {"epochs": max((r["epoch"] for r in val), default=0),
            "steps": max(steps, default=0),
            "best_val": best_val(metrics)}


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _eval_label(summary: dict, run_dir: Path) -> str:
    names = []
    for p in summary["checkpoints"]:
        p = Path(p).resolve()
        names.append(str(p.relative_to(run_dir)) if p.is_relative_to(run_dir) else str(p))
    k = len(names)
    models = f"1 CNN ({names[0]})" if k == 1 else f"{k} CNNs averaged ({', '.join(names)})"
    crops = "10 crops" if summary["crops"] == 10 else "centre crop"
    return f"this run: {models}, {crops}, {summary['n']} {summary.get('split', 'val')} images"


def render(run_dir: Path, cfg: Config, paper: Config, metrics: list[dict],
           evals: list[dict]) -> str:
    run_dir = Path(run_dir).resolve()
    t = training_summary(metrics)
    lines = [f"# AlexNet reproduction: {run_dir.name}", "",
             "Errors in %, ILSVRC-2012 val unless said otherwise.", "",
             _row("model", "top-1 err", "top-5 err", "source"), _row("---", "---:", "---:", "---")]
    for s in evals:
        lines.append(_row(_eval_label(s, run_dir), f"{s['top1_err']:.2f}", f"{s['top5_err']:.2f}",
                          "repro eval"))
    if t["best_val"] is not None:
        b = t["best_val"]
        lines.append(_row(f"this run: best centre-crop val during training (after epoch {b['epoch']}, "
                          f"{b['n']} images)", f"{b['top1_err']:.2f}", f"{b['top5_err']:.2f}",
                          "metrics.jsonl"))
    for a in ANCHORS:
        sign = "+" if a.delta else ""
        top1, top5 = (f"{sign}{v}" if v is not None else "—" for v in (a.top1_err, a.top5_err))
        lines.append(_row(a.model, top1, top5, a.source))
    c = cfg.model.num_classes
    lines += ["", f"This run: {t['epochs']} of {cfg.schedule.epochs} epochs, {t['steps']} steps "
              f"(metrics.jsonl); {c} classes, so chance is {100 * (1 - 1 / c):.1f}% top-1 and "
              f"{100 * max(0.0, 1 - 5 / c):.1f}% top-5 error."]
    if not evals:
        lines.append("The 10-crop rows need the val shards: `repro report RUN_DIR --data SHARDS`.")
    if c != paper.model.num_classes:
        lines.append(f"The paper's rows are over {paper.model.num_classes} classes: "
                     f"compare only a run on the full ImageNet.")
    diffs = differences(cfg, paper)
    lines += ["", f"## Settings that differ from the paper (configs/{PAPER_CONFIG.name})",
              ""]
    lines += [f"- {key}: {a!r} vs {b!r}" for key, a, b in diffs] or ["- none"]
    return "\n".join(lines) + "\n"


def _run(run_dir: Path) -> tuple[Config, list[dict]]:
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise ReproError(f"{metrics_path}: missing; is {run_dir} a `repro train` run directory?")
    return load_config(run_dir / "config.yaml"), read_metrics(run_dir)


def ablation_of(cfg: Config, base: Config, paper: Config) -> str | None:
    """The ablation config (configs/ablations/) whose changes to the paper are exactly
    this run's changes to the baseline run's model, optimizer and augmentation."""
    studied = ("model.", "optim.", "augment.")
    changed = {k: v for k, v, _ in differences(cfg, base) if k.startswith(studied)}
    for name in CLAIMS:
        wanted = {k: v for k, v, _ in differences(load_config(config_path(name)), paper)}
        if changed == {k: v for k, v in wanted.items() if k.startswith(studied)}:
            return name
    return None


def ablation_section(base_dir: Path, run_dirs: list[Path]) -> str:
    """Each ablation run's best centre-crop val error beside the baseline run's, with the
    change the paper claims (same data and schedule assumed: the settings lists say)."""
    paper = load_config(PAPER_CONFIG)
    base_cfg, base_metrics = _run(base_dir)
    base = training_summary(base_metrics)["best_val"]
    if base is None:
        raise ReproError(f"{base_dir}: no validation in metrics.jsonl yet")
    runs = {}
    for d in run_dirs:
        cfg, metrics = _run(Path(d))
        best = training_summary(metrics)["best_val"]
        if best is None:
            raise ReproError(f"{d}: no validation in metrics.jsonl yet")
        runs[ablation_of(cfg, base_cfg, paper) or Path(d).name] = (best["top1_err"], best["top5_err"])
    return ("\n## Ablations: best centre-crop val error beside the paper's claims\n\n"
            + ablation_table(runs, (base["top1_err"], base["top5_err"]),
                             baseline_label(base_dir, base_cfg, paper)))


def baseline_label(run_dir: Path, cfg: Config, paper: Config, most: int = 4) -> str:
    """The baseline run as what it is: its name, and where it differs from the paper's
    config in what defines a run and how long it is (not devices, loader or logging:
    repro.config.MAY_CHANGE_ON_RESUME)."""
    length = ("schedule.epochs", "data.steps_per_epoch", "data.val_limit")
    changed = [f"{key}={value!r}" for key, value, _ in differences(cfg, paper)
               if key in length or key in KEPT_ON_RESUME
               or not key.startswith(MAY_CHANGE_ON_RESUME)]
    more = f", and {len(changed) - most} more" if len(changed) > most else ""
    config = f"paper config with {', '.join(changed[:most])}{more}" if changed else "paper config"
    return f"{Path(run_dir).resolve().name} (baseline run): {config}"


def write_report(run_dir: str | Path, evals: list[dict] = (), out: str | Path | None = None,
                 ablations: list[str | Path] = ()) -> Path:
    """Render RUN_DIR's report (with the given `repro eval` summaries, and the ablation
    runs beside it) to `out` (default RUN_DIR/report.md)."""
    run_dir = Path(run_dir)
    cfg, metrics = _run(run_dir)
    text = render(run_dir, cfg, load_config(PAPER_CONFIG), metrics, list(evals))
    if ablations:
        text += ablation_section(run_dir, [Path(a) for a in ablations])
    out = Path(out) if out else run_dir / "report.md"
    write_outputs({out: text.encode()})
    return out


# ---- `repro report`'s options (repro.cli runs it) ------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", action="append",
                   help="default RUN_DIR/checkpoints/best.pt (else last.pt); repeat for an ensemble")
    p.add_argument("--data", help="shard directory: adds the 10-crop eval of the checkpoint(s) "
                                  "(default: the run's own shards, if they are still there)")
    p.add_argument("--centre", action="store_true", help="evaluate the centre crop, not 10 crops")
    p.add_argument("--out", help="markdown file (default RUN_DIR/report.md)")
    p.add_argument("--ablations", nargs="+", default=[], metavar="RUN",
                   help="ablation runs (configs/ablations/*) to set beside RUN_DIR and the "
                        "paper's claimed deltas")
    add_eval_options(p)
