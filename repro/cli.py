"""The `repro` command: one subcommand per stage of the pipeline."""
from __future__ import annotations

import argparse
import importlib
import sys

from repro import exits, preempt  # light: repro.config and the rest import torch (seconds)


# ---- argument types and the config options, shared by the commands ------------------------
def count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def positive(text: str) -> int:
    n = count(text)
    if n == 0:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return n


def add_config_arguments(p, required: bool = False, default=None) -> None:
    """--config NAME_OR_FILE and section.key=value overrides: every command that takes a config."""
    p.add_argument("--config", required=required, default=default, metavar="NAME_OR_FILE",
                   help="a YAML file, or a shipped config's name (alexnet_paper, ablations/no_lrn)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.02")


# ---- config, model-summary, train ----------------------------------------------------------
def cmd_config(args) -> int:
    from repro.config import load_config

    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def cmd_model_summary(args) -> int:
    from repro.config import load_config, model_kwargs
    from repro.model import build_model
    from repro.summary import format_summary, layer_summary

    cfg = load_config(args.config, args.overrides)
    model = build_model(model_kwargs(cfg))
    print(format_summary(layer_summary(model, cfg.data.crop_size, cfg.model.in_channels)))
    return 0


def add_train_arguments(p) -> None:
    add_config_arguments(p, required=True)
    p.add_argument("--data", required=True, help="shard directory (build_shards --out)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/checkpoints/last.pt (also automatic when it exists)")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="a new run starts from this checkpoint's weights where the shapes match "
                        "(fine-tuning; the classifier is re-initialised when the classes differ)")
    p.add_argument("--allow-other-shards", action="store_true",
                   help="resume on shards (same classes) whose manifest.json or stats.npz differ "
                        "from those the checkpoint was trained on")


def cmd_train(args) -> int:
    from repro.checkpoint import latest
    from repro.config import load_config
    from repro.imagenet import train

    cfg = load_config(args.config, args.overrides)
    if args.resume and latest(args.out) is None:
        raise exits.Refused(f"--resume: no checkpoint in {args.out}/checkpoints")
    status = train(cfg, args.data, args.out, init_from=args.init_from,
                   allow_other_shards=args.allow_other_shards, stop=args.stop)
    preempt.ignore_late_signals()     # the run is over: a late warning must not kill the exit
    return status


# ---- eval, report, figures, predict, demo: their options are in their modules -------------
def cmd_eval(args) -> int:
    import json

    from data_prep.atomic import check_output
    from repro.evaluate import evaluate, format_result, write_breakdown

    if args.out:
        check_output(args.out, directory=True)
    result = evaluate(args.checkpoint, args.data, args.ten_crop, args.batch_size, args.device,
                      args.workers, args.limit, args.split)
    summary = result.summary()
    if args.out:
        written = write_breakdown(result, args.out, args.worst)
        print("wrote " + ", ".join(map(str, written)), file=sys.stderr if args.json else sys.stdout)
    print(json.dumps(summary) if args.json else format_result(summary))
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from data_prep.atomic import check_output
    from repro.evaluate import EvalError, default_checkpoint, evaluate
    from repro.report import write_report
    from repro.tracking import run_data_dir

    args.out = check_output(args.out or Path(args.run_dir) / "report.md", directory=False)
    evals, data = [], args.data or run_data_dir(args.run_dir)
    try:
        ckpts = args.checkpoint or [default_checkpoint(args.run_dir)] if data else []
    except EvalError as e:
        if args.data:       # asked for an eval: there must be something to evaluate
            raise
        print(f"no eval: {e}", file=sys.stderr)
        ckpts = []
    if ckpts:
        print(f"{'10-crop' if not args.centre else 'centre-crop'} eval of "
              f"{', '.join(map(str, ckpts))} on {data}"
              f"{'' if args.data else ' (the shards the run trained on, from metrics.jsonl)'}",
              file=sys.stderr)
        evals.append(evaluate(ckpts, data, not args.centre, args.batch_size, args.device,
                              limit=args.limit, split=args.split).summary())
    path = write_report(args.run_dir, evals, args.out, args.ablations)
    print(path.read_text(), end="")
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_figures(args) -> int:
    from repro.figures import make_figures
    from repro.tracking import run_data_dir

    if args.data is None:
        args.data = run_data_dir(args.run_dir)
        print(f"no --data: the nearest-neighbour figure searches the shards the run trained "
              f"on, {args.data} (from metrics.jsonl)" if args.data else
              "no --data: skipping the nearest-neighbour figure (it needs the shards)",
              file=sys.stderr)
    for path in make_figures(args.run_dir, args.data, args.checkpoint, args.queries, args.scan,
                             args.device, args.split):
        print(path)
    return 0


def cmd_predict(args) -> int:
    from repro.predict import format_predictions, predict

    print(format_predictions(predict(args.checkpoint, args.images, args.data, args.top,
                                     args.device, not args.centre)))
    return 0


def cmd_demo(args) -> int:
    from repro.demo import run_demo

    run_demo(args.out, args.device, args.fast, classes=args.classes,
             train_per_class=args.train_per_class, val_per_class=args.val_per_class,
             epochs=args.epochs, steps_per_epoch=args.steps_per_epoch)
    return 0


# ---- the table -------------------------------------------------------------------------
# name: (help, its options: a function here or the module whose add_arguments defines them,
#        what runs it). bench parses its own argv (repro/bench.py); main() hands it over.
COMMANDS = {
    "config": ("print the resolved config", add_config_arguments, cmd_config),
    "model-summary": ("per-layer shapes, parameters and MACs", add_config_arguments,
                      cmd_model_summary),
    "train": ("train (or resume) a run", add_train_arguments, cmd_train),
    "eval": ("top-1/top-5 error on the val shards (10 crops, ensembles)", "repro.evaluate",
             cmd_eval),
    "report": ("markdown table: this run beside the paper's numbers", "repro.report", cmd_report),
    "figures": ("PNGs: first-layer filters, nearest neighbours, curves", "repro.figures",
                cmd_figures),
    "predict": ("the five most probable classes of your own images", "repro.predict",
                cmd_predict),
    "demo": ("the whole pipeline on a generated fixture", "repro.demo", cmd_demo),
    "bench": ("throughput of each stage and end to end (repro bench --help)", "repro.bench", None),
}


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command with its options; `only`: the options of that command alone (a
    command's module imports torch, seconds: a command line needs only its own)."""
    parser = argparse.ArgumentParser(prog="repro", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help, options, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help)
        if only in (None, name):
            if isinstance(options, str):
                options = importlib.import_module(options).add_arguments
            options(p)
        p.set_defaults(run=run)
    return parser


@exits.entry_point
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from repro.bench import main as bench_main
        return bench_main(argv[1:])
    # First of all, before torch loads: from here on SIGUSR1/SIGTERM/Ctrl-C ask the trainer
    # to stop at its next checkpointable point (exit 75/130), never kill it (138/143/-2).
    stop = preempt.StopFlag() if argv[:1] == ["train"] else None
    try:
        args = parser(only=argv[0] if argv else "").parse_args(argv)
        args.stop = stop
        return args.run(args)
    finally:
        if stop is not None:
            stop.close()


if __name__ == "__main__":
    sys.exit(main())
