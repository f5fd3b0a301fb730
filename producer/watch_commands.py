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

from producer.submit import Client, check_model
from producer.watch import Watcher, WatchSpec
from producer.watches import WatchOptions, all_watches, check_name
from producer.windows import check_window
from shared import sources
from shared.errors import ConfigError
from shared.settings import Settings
from shared.storage import Storage


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
        source, default_name = f"stream:{check_name(args.stream)}", args.stream
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
    return WatchSpec(check_name(args.watch_name or default_name), options, interval_s=args.interval,
                     metrics_port=args.metrics_port)


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
