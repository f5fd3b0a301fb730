"""Handlers of ``rstream watch`` and of ``rstream status`` without a job (the watches)."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from typing import Any

from rstream.producer.cli.args import Commands, positive, seconds
from rstream.producer.client import Client
from rstream.producer.submit import check_model
from rstream.producer.watch.record import WatchOptions, all_watches
from rstream.producer.watch.watcher import Watcher, WatchSpec
from rstream.producer.watch.windows import check_window
from rstream.shared import sources
from rstream.shared.errors import ConfigError
from rstream.shared.names import WATCH_NAME
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage


def add_parsers(commands: Commands) -> None:
    """The watch commands and their options."""
    p = commands.add_parser("watch", help="score every new image in a folder or a Redis "
                            "stream as it lands, in one job per window of time (runs until "
                            "stopped)")
    p.add_argument("source", nargs="?", help="a folder under RSTREAM_STORAGE_ROOT or "
                   "s3://bucket/prefix/, listed every --interval")
    p.add_argument("--stream", metavar="NAME", help="instead, read URIs that clients add with "
                   "XADD rstream:ingest:NAME * uri URI")
    p.add_argument("--model", help="model reference (default: RSTREAM_MODEL)")
    p.add_argument("--name", dest="watch_name", help="the watch's name, in its window job ids "
                   "watch-NAME-YYYYMMDDHH (default: the stream's, or the folder's last part)")
    p.add_argument("--interval", type=seconds, default=10.0, metavar="S",
                   help="seconds between two listings of the folder (default 10)")
    p.add_argument("--window", type=positive, default=3600, metavar="S",
                   help="seconds per window job, a divisor of a day (default 3600: a job "
                   "per hour)")
    p.add_argument("--ordered", action="store_true", help="new keys always sort after the "
                   "old ones: list only after the last key seen (S3 StartAfter) instead of "
                   "the whole folder; rewritten objects are then not seen")
    p.add_argument("--chunk-size", type=positive, help="images per task (default: "
                   "RSTREAM_CHUNK_SIZE)")
    p.add_argument("--metrics-port", type=positive, metavar="PORT", help="serve Prometheus "
                   "metrics (lag, objects, open windows) on this port (needs "
                   "prometheus-client)")
    p.set_defaults(handler=watch_command)


def watch_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    spec = build_spec(args, settings, client)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"watch {spec.name}: {spec.options.source} -> window jobs watch-{spec.name}-..., "
          f"model {spec.options.model} (`rstream status` shows it; SIGTERM or Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    Watcher(client, spec, stop).run()
    return 0


def build_spec(args: argparse.Namespace, settings: Settings, client: Client) -> WatchSpec:
    """The watch the command line asks for, checked (ConfigError naming the fix)."""
    if (args.source is None) == (args.stream is None):
        raise ConfigError("watch a folder (rstream watch SOURCE) or a Redis stream "
                          "(rstream watch --stream NAME): give exactly one")
    if args.stream is not None:
        if args.ordered:
            raise ConfigError("--ordered is for a listed folder, not for --stream")
        source, default_name = f"stream:{WATCH_NAME.check(args.stream)}", args.stream
    else:
        resolved = sources.resolve(args.source, client.storage)
        if resolved.kind != "folder":
            raise ConfigError(f"{args.source} is a list file: a watch lists a folder or "
                              "s3://bucket/prefix/; submit a list once with `rstream submit`")
        source, default_name = resolved.location, _name_of(resolved.location)
        for name, location in (("RSTREAM_RESULTS", settings.results),
                               ("RSTREAM_MODELS", settings.models)):
            if _inside(client.storage, location, source):
                raise ConfigError(f"{name}={location} is inside the watched folder {source}: "
                                  "the watcher would score what rstream writes there; watch "
                                  "a folder that holds only images")
    client.storage.resolve(settings.results)  # a refused output location fails here
    options = WatchOptions(source=source, model=check_model(args.model or settings.model, client),
                           window_s=check_window(args.window), ordered=args.ordered,
                           chunk_size=args.chunk_size or settings.chunk_size,
                           results=settings.results)
    return WatchSpec(WATCH_NAME.check(args.watch_name or default_name), options,
                     interval_s=args.interval, metrics_port=args.metrics_port)


def _inside(storage: Storage, location: str, folder: str) -> bool:
    """Whether ``location`` lies in ``folder`` (both resolved to a backend and a key)."""
    backend, key = storage.resolve(location)
    folder_backend, folder_key = storage.resolve(folder)
    return backend is folder_backend and (key.rstrip("/") + "/").startswith(folder_key)


def _name_of(location: str) -> str:
    """A watch name from a folder: its last part, with other characters as '-'."""
    last = location.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", last).strip("-.")[:64]
    if not name:
        raise ConfigError(f"cannot name a watch after {location!r}: give it --name NAME")
    return name


def print_watches(client: Client, as_json: bool) -> int:
    """``rstream status`` without a job: every watch, running or not, and its windows."""
    watches = all_watches(client.jobs.redis, client.jobs)
    if as_json:
        print(json.dumps(watches, indent=2))
        return 0
    if not watches:
        print("no watches (start one with `rstream watch SOURCE --model REF`); "
              "`rstream jobs` lists recent jobs")
        return 0
    for watch in watches:
        for line in _describe(watch):
            print(line)
    return 0


def _describe(watch: dict[str, Any]) -> list[str]:
    state = f"running ({watch['watcher']})" if watch["running"] else "stopped"
    lines = [f"watch {watch['watch']}: {state}  {watch.get('source')} ({watch['mode']})  "
             f"model {watch.get('model')}  windows of {watch.get('window_s')} s"]
    if "last_pass_at" in watch:
        ago = time.time() - float(watch["last_pass_at"])
        lines.append(f"  lag {float(watch.get('lag_s', 0)):.1f} s ({watch.get('waiting', 0)} "
                     f"chunk(s) waiting)  last pass {ago:.0f} s ago  seen-record "
                     f"{watch['seen_record']} entries")
    for window in watch["windows"]:
        lines.append(f"  window {window['job']} open until {window['until']}: "
                     f"{window['processed']}/{window['images']} images "
                     f"({window['failed']} failed)")
    return lines
