"""The ``rstream`` command line. Worker commands import torch lazily, only when they run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from shared.errors import RstreamError
from shared.logs import configure
from shared.settings import Settings, markdown_table

Handler = Callable[[argparse.Namespace, Settings], int]


def _config(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print(markdown_table())
    else:
        for name, value in settings.as_env().items():
            print(f"{name}={value}")
    return 0


def _score(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli import score_command

    return score_command(args, settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rstream", description="Batch image classification over Redis and Celery.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("config", help="print the settings in effect (validated)")
    p.add_argument("--markdown", action="store_true", help="print the README's table instead")
    p.set_defaults(handler=_config)

    p = commands.add_parser("score", help="score images in this process, without Redis")
    p.add_argument("source", help="a folder, a storage prefix (s3://bucket/prefix) or a list file")
    p.add_argument("--model", help="model reference (default RSTREAM_MODEL)")
    p.add_argument("--out", help="output JSONL file (default: standard output)")
    p.add_argument("--topk", type=int, help="classes per image (default RSTREAM_TOPK)")
    p.set_defaults(handler=_score)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rstream`` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        configure(settings.log_level)
        handler: Handler = args.handler
        return handler(args, settings)
    except RstreamError as exc:
        print(f"rstream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
