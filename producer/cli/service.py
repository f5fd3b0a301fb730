"""The commands that serve: ``rstream config``, ``rstream api`` and ``rstream exporter``."""

from __future__ import annotations

import argparse
import importlib.util

from rstream.producer.cli.args import Commands, positive
from rstream.shared.errors import ConfigError
from rstream.shared.settings import Settings, configuration_doc


def add_parsers(commands: Commands) -> None:
    """The serving commands and their options."""
    p = commands.add_parser("config", help="print the settings in effect (validated; "
                            "passwords masked)")
    p.add_argument("--markdown", action="store_true", help="print docs/configuration.md "
                   "(every setting, its default and meaning) instead")
    p.set_defaults(handler=config_command)

    p = commands.add_parser("api", help="serve the HTTP API and the jobs dashboard "
                            "(needs the api extra)")
    p.add_argument("--host", help="address to listen on (default: RSTREAM_API_HOST); "
                   "anything but 127.0.0.1 needs RSTREAM_API_TOKENS")
    p.add_argument("--port", type=positive, help="port (default: RSTREAM_API_PORT)")
    p.set_defaults(handler=api_command)

    p = commands.add_parser("exporter", help="serve the queues' metrics for Prometheus: "
                            "run one per Redis (no torch needed)")
    p.add_argument("--port", type=positive, help="port of /metrics, /healthz and /readyz "
                   "(default: RSTREAM_EXPORTER_PORT)")
    p.set_defaults(handler=exporter_command)


def config_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print(configuration_doc(), end="")
    else:
        for name, value in settings.shown().items():
            print(f"{name}={value}")
    return 0


def api_command(args: argparse.Namespace, settings: Settings) -> int:
    missing = [name for name in ("fastapi", "uvicorn", "pydantic", "prometheus_client")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"rstream api needs {', '.join(missing)}: install the api extra "
                          "(pip install 'rstream[api]')")
    from rstream.producer.api.app import serve

    return serve(settings, host=args.host, port=args.port)


def exporter_command(args: argparse.Namespace, settings: Settings) -> int:
    from rstream.producer.exporter import serve

    return serve(settings, port=args.port)
