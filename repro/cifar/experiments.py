"""`python -m repro.cifar`: the paper's two CIFAR-10 results, one command each.

    python -m repro.cifar figure1 --root DIR [--out OUT] [--download | --generate N,M] ...
    python -m repro.cifar lrn --root DIR [--out OUT] [--epochs N] ...

figure1 (section 3.1, Figure 1): the author's four-hidden-layer "80sec" net with ReLUs
and the same net with tanh units, no regularisation (no weight decay, no augmentation,
no dropout), each at its own learning rate: a short sweep over multiples of the params
file's rates picks, for each, the one with the lowest training error after
--sweep-epochs (the paper chose them "to make training as fast as possible"). Then both
train until their training error reaches 25% (--full: all --epochs), and OUT/figure1/
gets figure1.png (training error against epochs, both curves, the 25% line), figure1.json
and the epochs each needed, with their ratio (the paper: six times).

lrn (section 3.3): the author's conv + locally connected "11pct" net with its response
normalisation layers and without them, the same recipe (random 24x24 crops and mirrors,
the params file's rates and weight decay, its epochs then /10 and /100), test error on
the 9-view average as cuda-convnet measured it, beside the paper's 11% and 13%:
OUT/lrn/lrn.json and a table on stdout.

Every run is a run directory (metrics.jsonl, checkpoints/, W&B with --wandb): the same
command again resumes where it stopped, and re-tests what is done. CIFAR-10 is read from
the python batches under --root (repro.cifar.data); --download fetches them,
--generate writes a learnable stand-in of that format first (for timing, and tests).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from matplotlib.figure import Figure

import copy

from repro import exits, preempt
from repro.cifar.data import download, generate, load, provenance
from repro.cifar.nets import NETS
from repro.cifar.train import CifarConfig, train_run
from repro.config import load_config
from repro.step import NonFiniteLoss

PAPER = {"figure1_ratio": 6.0, "target_err": 25.0, "lrn_with": 11.0, "lrn_without": 13.0}
FIGURE1_NET = "80sec"


def epochs_to(curve: list[dict], target: float) -> float | None:
    """Epochs until the training error first reaches `target` (%), interpolated linearly
    between the points either side; None if it never does."""
    for before, point in zip([None, *curve], curve):
        if point["train_err"] <= target:
            if before is None or before["train_err"] == point["train_err"]:
                return point["epoch"]
            share = (before["train_err"] - target) / (before["train_err"] - point["train_err"])
            return before["epoch"] + share * (point["epoch"] - before["epoch"])
    return None


def variant(base: CifarConfig, **keys) -> CifarConfig:
    """`base` with some keys set: variant(cfg, net__neuron="tanh") sets net.neuron."""
    cfg = copy.deepcopy(base)
    for key, value in keys.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def sweep(base: CifarConfig, neuron: str, scales: list[float], epochs: int, data, prov: dict,
          out: Path, stop=None) -> tuple[float, list[dict]]:
    """The learning-rate scale whose run has the lowest training error after `epochs`
    (the last point: the last fifth of the last epoch; diverging runs lose), and every
    run's result."""
    table = []
    for scale in scales:
        cfg = variant(base, net__name=FIGURE1_NET, net__neuron=neuron, optim__lr_scale=scale,
                      optim__regularise=False, optim__phases=[epochs], train__test=False)
        try:
            curve = train_run(cfg, data, prov, out / f"{neuron}-lr{scale:g}", stop)["curve"]
            table.append({"neuron": neuron, "lr_scale": scale, "train_err": curve[-1]["train_err"]})
        except NonFiniteLoss as e:
            table.append({"neuron": neuron, "lr_scale": scale, "train_err": None, "diverged": str(e)})
    done = [row for row in table if row["train_err"] is not None]
    if not done:
        raise SystemExit(f"every learning-rate scale diverged for the {neuron} net: {scales}")
    return min(done, key=lambda row: row["train_err"])["lr_scale"], table


def figure1(root, out, base: CifarConfig = CifarConfig(), stop=None, *, lr_scales=(0.5, 1.0, 2.0, 4.0),
            sweep_epochs=2, epochs=60, full=False) -> dict:
    """Figure 1 into OUT/figure1; returns what figure1.json holds."""
    out, target = Path(out) / "figure1", PAPER["target_err"]
    data, prov = load(root), provenance(root)
    result = {"net": FIGURE1_NET, "target_err": target, "paper_ratio": PAPER["figure1_ratio"]}
    for neuron in ("relu", "tanh"):
        scale, table = (sweep(base, neuron, list(lr_scales), sweep_epochs, data, prov, out / "sweep", stop)
                        if len(lr_scales) > 1 else (lr_scales[0], []))
        cfg = variant(base, net__name=FIGURE1_NET, net__neuron=neuron, optim__lr_scale=scale,
                      optim__regularise=False, optim__phases=[epochs], train__test=False,
                      train__stop_below=0.0 if full else target)
        trained = train_run(cfg, data, prov, out / neuron, stop)
        result[neuron] = {"lr_scale": scale, "sweep": table, "curve": trained["curve"],
                          "epochs_to_target": epochs_to(trained["curve"], target),
                          "seconds_per_epoch": trained["seconds_per_epoch"]}
    relu, tanh = (result[n]["epochs_to_target"] for n in ("relu", "tanh"))
    result["ratio"] = tanh / relu if relu and tanh else None
    plot_figure1(result, out / "figure1.png")
    (out / "figure1.json").write_text(json.dumps(result, indent=1) + "\n")
    print(figure1_summary(result, out), flush=True)
    return result


def plot_figure1(result: dict, path: Path) -> Path:
    """The paper's Figure 1: training error rate against epochs, ReLU solid, tanh dashed."""
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    for neuron, style, label in (("relu", "-", "ReLU"), ("tanh", "--", "tanh")):
        curve, reach = result[neuron]["curve"], result[neuron]["epochs_to_target"]
        ax.plot([p["epoch"] for p in curve], [p["train_err"] / 100 for p in curve], style,
                color="k", label=f"{label} (lr x{result[neuron]['lr_scale']:g})")
        if reach is not None:
            ax.axvline(reach, color="0.6", lw=0.8, ls=":")
            ax.annotate(f"{reach:.1f}", (reach, result["target_err"] / 100), fontsize=8,
                        xytext=(3, 4), textcoords="offset points")
    ax.axhline(result["target_err"] / 100, color="0.4", lw=0.8)
    ratio = f"{result['ratio']:.1f}x" if result["ratio"] else "n/a"
    ax.set(xlabel="Epochs", ylabel="Training error rate", ylim=(0, 1),
           title=f"CIFAR-10, {result['net']} net: tanh/ReLU epochs to 25% = {ratio} (paper: 6x)")
    ax.title.set_fontsize(9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def figure1_summary(result: dict, out: Path) -> str:
    lines = [f"Figure 1 ({result['net']} net, no regularisation): epochs to "
             f"{result['target_err']:g}% training error"]
    for neuron in ("relu", "tanh"):
        r = result[neuron]
        reach = f"{r['epochs_to_target']:.2f}" if r["epochs_to_target"] else "not reached"
        lines.append(f"  {neuron:4}  lr x{r['lr_scale']:g}: {reach}")
    ratio = f"{result['ratio']:.2f}" if result["ratio"] else "n/a"
    lines.append(f"  ratio tanh/ReLU: {ratio} (paper: about {result['paper_ratio']:g})")
    lines.append(f"  plot: {out / 'figure1.png'}")
    return "\n".join(lines)


def lrn(root, out, base: CifarConfig = CifarConfig(), stop=None, *, net="11pct", epochs=None,
        drop_epochs=None) -> dict:
    """The net with and without its response normalisation into OUT/lrn; returns lrn.json.
    epochs: at the file's rates (default the file's); drop_epochs: at each lower rate."""
    spec, out = NETS[net], Path(out) / "lrn"
    first, *drops = spec.schedule
    schedule = (first if epochs is None else epochs,
                *(d if drop_epochs is None else drop_epochs for d in drops))
    data, prov = load(root), provenance(root)
    result = {"net": net, "schedule": list(schedule), "paper": {"with": PAPER["lrn_with"],
                                                                 "without": PAPER["lrn_without"]}}
    for name, with_lrn in (("with", True), ("without", False)):
        cfg = variant(base, net__name=net, net__lrn=with_lrn, optim__phases=list(schedule),
                      train__test=True)
        trained = train_run(cfg, data, prov, out / name, stop)
        result[name] = {k: v for k, v in trained.items() if k.startswith("test_err")} | {
            "epochs": trained["epochs"], "seconds_per_epoch": trained["seconds_per_epoch"]}
    (out / "lrn.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = [f"| {name} response normalisation | {result[name]['test_err']:.2f} | "
            f"{result[name]['test_err_centre']:.2f} | {result['paper'][name]:g} |"
            for name in ("with", "without")]
    print(f"Section 3.3 on CIFAR-10 ({net} net, {sum(schedule)} epochs, {len(data.test_labels)} "
          f"test images):\n| net | test error, multiview (%) | centre crop (%) | paper (%) |\n"
          f"|---|---|---|---|\n" + "\n".join(rows), flush=True)
    return result


def count(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The two commands; each run's settings are the config's (CifarConfig: --config, and
    section.key=value overrides such as train.device=cpu train.batch_size=64)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", required=True, help="holds cifar-10-batches-py/ (or is it)")
    common.add_argument("--out", default="cifar_out", help="where the runs go (default cifar_out)")
    common.add_argument("--config", help="a config file or a shipped config's name (default: "
                                          "repro.cifar.train.CifarConfig's values)")
    common.add_argument("--download", action="store_true", help="fetch CIFAR-10 into --root first")
    common.add_argument("--generate", metavar="N_TRAIN,N_TEST",
                        help="first write a generated stand-in of that many images under --root")
    common.add_argument("overrides", nargs="*", help="section.key=value")
    p = argparse.ArgumentParser(prog="python -m repro.cifar", description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    fig = commands.add_parser("figure1", parents=[common], help="Figure 1: ReLU vs tanh")
    fig.add_argument("--lr-scales", default="0.5,1,2,4",
                     help="multiples of the params file's rates to sweep (one value: no sweep)")
    fig.add_argument("--sweep-epochs", type=count, default=2)
    fig.add_argument("--epochs", type=count, default=60, help="at most this many epochs a net")
    fig.add_argument("--full", action="store_true", help="train all --epochs, not only to 25%%")
    norm = commands.add_parser("lrn", parents=[common], help="section 3.3: with and without LRN")
    norm.add_argument("--net", default="11pct", choices=("11pct",))
    norm.add_argument("--epochs", type=count, help="epochs at the file's rates (default: its 500)")
    norm.add_argument("--drop-epochs", type=count,
                      help="epochs at each of the rates /10 and /100 (default: the file's 10)")
    return p


@exits.entry_point
def main(argv=None) -> int:
    stop = preempt.StopFlag()       # a stop signal ends the run in progress with a checkpoint
    cli = parser()
    args = cli.parse_args(argv)
    if args.epochs == 0 or getattr(args, "sweep_epochs", 1) == 0:
        cli.error("--epochs and --sweep-epochs must be at least 1")
    base = load_config(args.config, args.overrides, schema=CifarConfig)
    try:
        prepare(args, cli, base.train.seed)
        if args.command == "figure1":
            scales = parse_counts(args.lr_scales, float, cli, "--lr-scales")
            figure1(args.root, args.out, base, stop, lr_scales=scales,
                    sweep_epochs=args.sweep_epochs, epochs=args.epochs, full=args.full)
        else:
            lrn(args.root, args.out, base, stop, net=args.net, epochs=args.epochs,
                drop_epochs=args.drop_epochs)
    except SystemExit as e:          # a run stopped by a signal: its status (75, 130)
        return e.code
    finally:
        preempt.ignore_late_signals()  # the runs are over: a late warning must not kill the exit
    return 0


def parse_counts(text: str, kind, parser, flag: str) -> list:
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        parser.error(f"{flag} takes comma-separated numbers, got {text!r}")
    if not values or any(v <= 0 for v in values):
        parser.error(f"{flag} takes positive numbers, got {text!r}")
    return values


def prepare(args, parser, seed: int) -> None:
    """--generate or --download, before anything trains."""
    if args.generate:
        counts = parse_counts(args.generate, int, parser, "--generate")
        if len(counts) != 2:
            parser.error(f"--generate takes N_TRAIN,N_TEST (two counts), got {args.generate!r}")
        generate(args.root, *counts, seed=seed)
    if args.download:
        download(args.root)
