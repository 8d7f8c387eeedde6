"""The `repro` command: one subcommand per stage of the pipeline."""
from __future__ import annotations

import argparse
import re
import sys

from repro import preempt     # light: repro.config and the rest import torch (seconds)


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


def cmd_train(args) -> int:
    from repro.checkpoint import latest
    from repro.config import load_config
    from repro.imagenet import train

    cfg = load_config(args.config, args.overrides)
    if args.resume and latest(args.out) is None:
        print(f"--resume: no checkpoint in {args.out}/checkpoints", file=sys.stderr)
        return 2
    return train(cfg, args.data, args.out, init_from=args.init_from,
                 allow_other_shards=args.allow_other_shards, stop=args.stop)


def reports_errors(cmd):
    """Bad input to train/eval/report/figures/demo (a missing file, a damaged checkpoint, one
    that does not fit the shards, a resume with other settings) is one line on stderr and
    status 2 (repro.exits), not a traceback; a disk that fills up under a checkpoint is
    one line and status 74."""
    def run(args) -> int:
        from data_prep.atomic import OutputError
        from data_prep.manifest import ShardsError
        from data_prep.tarindex import TarError
        from repro.checkpoint import EXIT_NO_SPACE, CheckpointError, NoSpace, RunLocked
        from repro.distributed import DeviceError
        from repro.evaluate import EvalError
        from repro.exits import EXIT_BAD_INPUT, Refused

        try:
            return cmd(args)
        except (EvalError, CheckpointError, FileNotFoundError, DeviceError, ShardsError,
                TarError, RunLocked, OutputError, Refused) as e:
            print(f"error: {error_line(e)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except NoSpace as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_NO_SPACE
    return run


def error_line(e: Exception) -> str:
    """The message; for one re-raised from a DataLoader worker ("Caught X in DataLoader
    worker process N. Original Traceback ..."), the original exception's own message."""
    text = str(e)
    if not text.startswith("Caught "):
        return text
    return re.sub(r"^[\w.]+: ", "", text.strip().splitlines()[-1])


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
                             args.device):
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


def cmd_bench(argv: list[str]) -> int:
    from repro.bench import main as bench_main

    return bench_main(argv)


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


def add_eval_options(p) -> None:
    p.add_argument("--batch-size", type=count, default=0,
                   help="val images a batch (x10 crops); 0 = the checkpoint's data.val_batch_size")
    p.add_argument("--limit", type=count, default=0, help="only the first N images (0 = all)")
    p.add_argument("--split", default="val", choices=("val", "test"),
                   help="the shards' split: val, or test where the shards have labelled test "
                        "images (ILSVRC-2010, the paper's Table 1)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def parser() -> argparse.ArgumentParser:
    """The commands and their options: a table, one block a command (long by nature)."""
    parser = argparse.ArgumentParser(prog="repro", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="print the resolved config")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.02")
    p.set_defaults(run=cmd_config)

    p = sub.add_parser("model-summary", help="per-layer shapes, parameters and MACs")
    p.add_argument("--config", default=None)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(run=cmd_model_summary)

    p = sub.add_parser("train", help="train (or resume) a run")
    p.add_argument("--config", required=True)
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
    p.add_argument("overrides", nargs="*")
    p.set_defaults(run=reports_errors(cmd_train))

    p = sub.add_parser("eval", help="top-1/top-5 error on the val shards (10 crops, ensembles)")
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
    p.set_defaults(run=reports_errors(cmd_eval))

    p = sub.add_parser("report", help="markdown table: this run beside the paper's numbers")
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
    p.set_defaults(run=reports_errors(cmd_report))

    p = sub.add_parser("figures", help="PNGs: first-layer filters, nearest neighbours, curves")
    p.add_argument("run_dir")
    p.add_argument("--data", help="shard directory (needed for the nearest-neighbour figure)")
    p.add_argument("--checkpoint", help="default RUN_DIR/checkpoints/best.pt (else last.pt)")
    p.add_argument("--queries", type=positive, default=5, help="val images in the neighbour figure")
    p.add_argument("--scan", type=count, default=0,
                   help="training images searched for neighbours: 0 (default) the whole "
                        "training split, as the paper; N the first N in shard order (quicker)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(run=reports_errors(cmd_figures))

    p = sub.add_parser("predict", help="the five most probable classes of your own images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG, PNG, ... files")
    p.add_argument("--data", help="the shards it was trained on (stats.npz, class names); "
                                  "default: the run's own, if the checkpoint is in a run dir")
    p.add_argument("--top", type=positive, default=5)
    p.add_argument("--centre", action="store_true", help="the centre crop, not the 10 crops")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(run=reports_errors(cmd_predict))

    p = sub.add_parser("demo", help="the whole pipeline on a generated fixture")
    p.add_argument("--out", default="demo_out", help="working directory (default ./demo_out)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--fast", action="store_true", help="the smallest sizes (the test suite's)")
    p.add_argument("--classes", type=int)
    p.add_argument("--train-per-class", type=int)
    p.add_argument("--val-per-class", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.set_defaults(run=reports_errors(cmd_demo))

    # bench parses its own options (repro/bench.py); listed here for --help.
    sub.add_parser("bench", help="throughput of each stage and end to end (repro bench --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    # First of all, before torch loads: from here on SIGUSR1/SIGTERM/Ctrl-C ask the trainer
    # to stop at its next checkpointable point (exit 75/130), never kill it (138/143/-2).
    stop = preempt.StopFlag() if argv[:1] == ["train"] else None
    try:
        return run_command(argv, stop)
    finally:
        if stop is not None:
            stop.close()


def run_command(argv: list[str], stop: preempt.StopFlag | None) -> int:
    from repro.config import ConfigError

    args = parser().parse_args(argv)
    args.stop = stop
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
