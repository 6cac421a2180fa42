"""Command-line interface: `immunofold predict|batch|evaluate|train|serve`."""

from __future__ import annotations

import argparse
import sys


def _train(args: argparse.Namespace) -> int:
    from immunofold.train.config import TrainConfig
    from immunofold.train.loop import train

    config = TrainConfig.from_yaml(args.config)
    if args.max_minutes is not None:
        config.max_minutes = args.max_minutes
    if args.threads is not None:
        config.threads = args.threads
    best = train(config, log=lambda line: print(line, flush=True))
    print(f"best val: {best}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="immunofold", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (or resume training) one model from a YAML config")
    train.add_argument("--config", required=True, help="YAML training config, e.g. configs/member0.yaml")
    train.add_argument("--max-minutes", type=float, default=None, help="stop after this long; rerun to resume")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads (overrides the config)")
    train.set_defaults(handler=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
