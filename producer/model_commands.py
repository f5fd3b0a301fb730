"""Handlers of the model and training commands: train, models ls / promote / rollback.

No torch: training runs on a trainer (``rstream worker --train``); these commands send it work
and read the registry in storage.
"""

from __future__ import annotations

import argparse
import json
import sys

from producer import monitor, training
from producer.submit import Client
from shared.errors import ConfigError
from shared.finetune_runs import TrainRuns
from shared.registry import Registry
from shared.settings import Settings


def train_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "status":
        return _train_status(args, settings)
    if args.action or args.run:
        raise ConfigError(f"unexpected argument {args.action or args.run!r}: use `rstream train "
                          "[OPTIONS]` to start a run, `rstream train status RUN` to follow one")
    options = training.checked_options(
        settings, name=args.name, mode=args.mode, epochs=args.epochs, start=args.start,
        force=args.force, data=args.data, overrides=_training_options(args.set),
        preset_name=args.preset)
    client = Client(settings)
    run = training.start_run(client, options)
    print(run)
    if not args.wait:
        print(f"follow it with `rstream train status {run} --wait`", file=sys.stderr)
        return 0
    return _follow(TrainRuns(client.jobs.redis), run)


def _train_status(args: argparse.Namespace, settings: Settings) -> int:
    if not args.run:
        raise ConfigError("rstream train status needs a run id (printed by `rstream train`)")
    client = Client(settings)
    state = training.run_state(client, args.run)
    if args.wait:
        return _follow(TrainRuns(client.jobs.redis), args.run)
    print(json.dumps(state, indent=2, default=str))
    return 0 if state.get("status") not in ("failed", "locked") else 1


def _follow(runs: TrainRuns, run: str) -> int:
    outcome = monitor.wait_training(runs, run, show_progress=True)
    print(json.dumps(outcome, indent=2, default=str))
    return 0 if outcome.get("status") in ("promoted", "trained", "skipped") else 1


def _training_options(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` pairs as training options; a VALUE that is not JSON is plain text."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r} is invalid: use KEY=VALUE, e.g. --set resize=36")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def models_ls_command(args: argparse.Namespace, settings: Settings) -> int:
    registry = Registry(Client(settings).storage, settings.models)
    for name in [args.name] if args.name else registry.names():
        model = training.model_versions(registry, name)
        for v in model["versions"]:
            shown = "-" if v["val_accuracy"] is None else f"{v['val_accuracy']:.4f}"
            mark = "*" if v["version"] == model["production"] else " "
            print(f"{mark} {name}@{v['version']}\t{v['arch']}\t{v['classes']} classes\t"
                  f"val_acc {shown}\t{v['gate']}")
    return 0


def models_promote_command(args: argparse.Namespace, settings: Settings) -> int:
    name, _, version = args.ref.partition("@")
    if not version:
        raise ConfigError(f"{args.ref!r}: give NAME@VERSION (see `rstream models ls {name}`)")
    registry = Registry(Client(settings).storage, settings.models)
    pointer, changed = training.promote(registry, name, version)
    if not changed:
        print(f"{name}: {version} is already in production; nothing changed")
    else:
        print(f"{name}: production is now {pointer['version']}")
    return 0


def models_rollback_command(args: argparse.Namespace, settings: Settings) -> int:
    registry = Registry(Client(settings).storage, settings.models)
    pointer = registry.rollback(args.name)
    print(f"{args.name}: production is back to {pointer['version']}")
    return 0
