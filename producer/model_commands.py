"""Handlers of the model and training commands: train, models ls / promote / rollback.

No torch: training runs on a trainer (``rstream worker --train``); these commands send it work
and read the registry in storage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import uuid
from typing import Any

from producer import monitor
from producer.submit import Client
from shared import modelref
from shared.constants import FINETUNE_TASK, TRAIN_QUEUE
from shared.errors import ConfigError, NotFoundError
from shared.finetune_config import TrainConfig, check_overrides, preset
from shared.finetune_runs import TrainRuns
from shared.modelref import check_name
from shared.registry import Registry
from shared.settings import Settings


def train_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "status":
        return _train_status(args, settings)
    if args.action or args.run:
        raise ConfigError(f"unexpected argument {args.action or args.run!r}: use `rstream train "
                          "[OPTIONS]` to start a run, `rstream train status RUN` to follow one")
    options = _checked_options(args, settings)
    client = Client(settings)
    run = f"train-{uuid.uuid4().hex[:12]}"
    runs = TrainRuns(client.jobs.redis)
    runs.update(run, status="queued", name=options.get("name", settings.train_model))
    client.app.send_task(FINETUNE_TASK, kwargs=options, queue=TRAIN_QUEUE, task_id=run)
    print(run)
    if not args.wait:
        print(f"follow it with `rstream train status {run} --wait`", file=sys.stderr)
        return 0
    return _follow(runs, run)


def _checked_options(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The run's options, every one checked here, so a mistake is one line now rather than a
    traceback in the trainer's log."""
    chosen = preset(args.preset) if args.preset else {}
    preset_mode, preset_epochs = chosen.pop("mode", None), chosen.pop("epochs", None)
    mode, epochs = args.mode or preset_mode, args.epochs or preset_epochs
    overrides = check_overrides({**chosen, **_training_options(args.set)})
    TrainConfig(mode=mode or settings.train_mode, epochs=epochs or settings.train_epochs,
                **overrides)
    if args.name:
        check_name(args.name)
    if args.start:
        modelref.parse(args.start)
    if args.data:
        dataclasses.replace(settings, train_data=args.data)  # the setting's own checks
    options = {"name": args.name, "mode": mode, "epochs": epochs,
               "start": args.start, "force": args.force or None, "data": args.data,
               "overrides": overrides or None}
    return {key: value for key, value in options.items() if value is not None}


def _train_status(args: argparse.Namespace, settings: Settings) -> int:
    if not args.run:
        raise ConfigError("rstream train status needs a run id (printed by `rstream train`)")
    runs = TrainRuns(Client(settings).jobs.redis)
    state = runs.get(args.run)
    if not state:
        raise NotFoundError(f"fine-tune run {args.run} not found (unknown, or older than "
                            "7 days)")
    if args.wait:
        return _follow(runs, args.run)
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
        pointer, _ = registry.read_pointer(name)
        production = pointer["version"] if pointer else None
        for version in registry.versions(name):
            meta = registry.read_meta(name, version)
            accuracy = meta.get("metrics", {}).get("val_accuracy")
            shown = "-" if accuracy is None else f"{accuracy:.4f}"
            mark = "*" if version == production else " "
            note = meta.get("gate", {}).get("reason") or meta.get("imported", {}).get("reason", "")
            print(f"{mark} {name}@{version}\t{meta.get('arch')}\t{len(meta.get('classes', []))} "
                  f"classes\tval_acc {shown}\t{note}")
    return 0


def models_promote_command(args: argparse.Namespace, settings: Settings) -> int:
    name, _, version = args.ref.partition("@")
    if not version:
        raise ConfigError(f"{args.ref!r}: give NAME@VERSION (see `rstream models ls {name}`)")
    registry = Registry(Client(settings).storage, settings.models)
    current, _ = registry.read_pointer(name)
    if current and current["version"] == version:
        registry.read_meta(name, version)
        print(f"{name}: {version} is already in production; nothing changed")
        return 0
    pointer = registry.promote(name, version, reason="promoted by hand")
    print(f"{name}: production is now {pointer['version']}")
    return 0


def models_rollback_command(args: argparse.Namespace, settings: Settings) -> int:
    registry = Registry(Client(settings).storage, settings.models)
    pointer = registry.rollback(args.name)
    print(f"{args.name}: production is back to {pointer['version']}")
    return 0
