"""The `repro` command: one subcommand per stage of the pipeline."""
from __future__ import annotations

import argparse
import sys

from repro.config import ConfigError, load_config


def cmd_config(args) -> int:
    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def cmd_model_summary(args) -> int:
    from repro.config import model_kwargs
    from repro.model import build_model
    from repro.summary import format_summary, layer_summary

    cfg = load_config(args.config, args.overrides)
    model = build_model(model_kwargs(cfg))
    print(format_summary(layer_summary(model, cfg.data.crop_size, cfg.model.in_channels)))
    return 0


def cmd_train(args) -> int:
    from repro.train import train

    from repro.checkpoint import latest

    cfg = load_config(args.config, args.overrides)
    if latest(args.out) is not None:
        print(f"{args.out} has a checkpoint: resuming it", flush=True)
    elif args.resume:
        print(f"--resume: no checkpoint in {args.out}/checkpoints", file=sys.stderr)
        return 2
    return train(cfg, args.data, args.out)


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("overrides", nargs="*")
    p.set_defaults(run=cmd_train)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
