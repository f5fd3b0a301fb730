"""The ``rstream`` command line: the parser and ``main``.

One module per command group, each with its ``add_parsers`` and its handlers: ``jobs``
(submit, status, wait, results, ...), ``watch``, ``models`` (train and the registry),
``service`` (config, api, exporter) and ``worker`` (score, samples, worker, beat), the only
one that starts worker code, imported inside its handlers so that a host without torch runs
every other command.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence

import redis

from rstream.producer.cli import jobs, models, service, watch, worker
from rstream.producer.cli.args import Handler
from rstream.shared.connections import redis_problem
from rstream.shared.errors import RstreamError
from rstream.shared.logs import configure
from rstream.shared.settings import Settings

GROUPS = (service, jobs, watch, models, worker)  # the order of ``rstream --help``


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rstream", description="Batch image classification over Redis and Celery. "
        "Every default comes from an RSTREAM_* setting: `rstream config` shows them.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(commands)
    return parser




def _version() -> str:
    try:
        return importlib.metadata.version("rstream")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rstream`` console script."""
    args = build_parser().parse_args(argv)
    settings: Settings | None = None
    try:
        settings = Settings.from_env()
        configure(settings.log_level, settings.log_format)
        handler: Handler = args.handler
        return handler(args, settings)
    except RstreamError as exc:
        print(f"rstream: error: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:  # Redis went away in the middle of a command
        assert settings is not None
        print(f"rstream: error: {redis_problem(settings.redis_url, exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader stopped reading (`rstream results JOB | head`): not an error. Point
        # stdout at /dev/null so that the flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


