"""The paper's ablation claims, in one machine-readable place, and a table that puts
measured runs beside them.

CLAIMS maps an ablation config (configs/ablations/<name>.yaml, by file stem) to the
change in top-1/top-5 error (percentage points, ablation minus the paper's net) that
the paper reports for it; None where the paper gives no number.
"""
from __future__ import annotations

from pathlib import Path

from repro.config import packaged_config

ABLATIONS_DIR = packaged_config("ablations")

CLAIMS: dict[str, dict] = {
    "no_lrn": {"top1": +1.4, "top5": +1.2, "source": "section 3.3"},
    "no_overlap_pool": {"top1": +0.4, "top5": +0.3, "source": "section 3.4"},
    "no_pca_noise": {"top1": +1.0, "top5": None, "source": "section 4.1 (top-1 'by over 1%')"},
    "one_gpu_half_kernels": {"top1": +1.7, "top5": +1.2, "source": "section 3.2"},
    "lrn_cuda_convnet": {"top1": None, "top5": None, "source": "convention (cuda-convnet), no claim"},
    "lrn_caffe": {"top1": None, "top5": None, "source": "convention (Caffe), no claim"},
    "no_dropout": {"top1": None, "top5": None,
                   "source": "section 4.2 (substantial overfitting; dropout ~doubles the "
                             "iterations to converge)"},
    "no_translations_reflections": {"top1": None, "top5": None,
                                    "source": "section 4.1 (substantial overfitting)"},
    "no_conv3": {"top1": +2.0, "top5": None, "source": "section 7 (top-1 'about 2%')"},
    "no_conv4": {"top1": +2.0, "top5": None, "source": "section 7 (top-1 'about 2%')"},
    "tanh": {"top1": None, "top5": None,
             "source": "section 3.1 (measured on CIFAR-10 only: Figure 1)"},
}


def config_path(name: str) -> Path:
    return ABLATIONS_DIR / f"{Path(name).stem}.yaml"


def _num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def ablation_table(runs: dict[str, tuple[float, float]], baseline: tuple[float, float],
                   baseline_label: str = "paper config (baseline run)") -> str:
    """Markdown: each run's top-1/top-5 error (%), its change against `baseline` (the
    paper config's run, same data and schedule), and the paper's claimed change.
    Run names are ablation config names (stem, file name or path); others get no claim."""
    head = ("| run | top-1 err | top-5 err | Δ top-1 | Δ top-5 | claimed Δ top-1 | "
            "claimed Δ top-5 | source |")
    rows = [head, "|" + "---|" * 8,
            f"| {baseline_label} | {_num(baseline[0])} | {_num(baseline[1])} | | | | | |"]
    for name, (top1, top5) in runs.items():
        claim = CLAIMS.get(Path(name).stem, {"top1": None, "top5": None, "source": "—"})
        rows.append(f"| {Path(name).stem} | {_num(top1)} | {_num(top5)} | "
                    f"{_num(top1 - baseline[0], True)} | {_num(top5 - baseline[1], True)} | "
                    f"{_num(claim['top1'], True)} | {_num(claim['top5'], True)} | {claim['source']} |")
    return "\n".join(rows) + "\n"
