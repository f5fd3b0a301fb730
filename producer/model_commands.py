"""Handlers of the model and training commands: train, models ls / promote / rollback.

No torch: training runs on a trainer (``rstream worker --train``); these commands send it work
and read the registry in storage.
"""

from __future__ import annotations

import argparse
import json
import uuid

from producer import monitor
from producer.submit import Client
from shared.constants import FINETUNE_TASK, TRAIN_QUEUE
from shared.errors import ConfigError
from shared.finetune_runs import TrainRuns
from shared.registry import Registry
from shared.settings import Settings


def train_command(args: argparse.Namespace, settings: Settings) -> int:
    client = Client(settings)
    run = f"train-{uuid.uuid4().hex[:12]}"
    options = {k: v for k, v in {"name": args.name, "mode": args.mode, "epochs": args.epochs,
                                 "start": args.start, "force": args.force or None}.items()
               if v is not None}
    if args.set:
        options["overrides"] = _training_options(args.set)
    runs = TrainRuns(client.jobs.redis)
    runs.update(run, status="queued", name=args.name or settings.train_model)
    client.app.send_task(FINETUNE_TASK, kwargs=options, queue=TRAIN_QUEUE, task_id=run)
    print(run)
    if not args.wait:
        return 0
    outcome = monitor.wait_training(runs, run, show_progress=True)
    print(json.dumps(outcome, indent=2, default=str))
    return 0 if outcome.get("status") in ("promoted", "trained", "skipped") else 1


def _training_options(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` pairs as training options; a VALUE that is not JSON is plain text.

    The trainer checks the keys (it knows the training config; this side has no torch).
    """
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
            print(f"{mark} {name}@{version}\t{meta.get('arch')}\t{len(meta.get('classes', []))} "
                  f"classes\tval_acc {shown}\t{meta.get('gate', {}).get('reason', '')}")
    return 0


def models_promote_command(args: argparse.Namespace, settings: Settings) -> int:
    name, _, version = args.ref.partition("@")
    if not version:
        raise ConfigError(f"{args.ref!r}: give NAME@VERSION (see `rstream models ls {name}`)")
    registry = Registry(Client(settings).storage, settings.models)
    pointer = registry.promote(name, version, reason="promoted by hand")
    print(f"{name}: production is now {pointer['version']}")
    return 0


def models_rollback_command(args: argparse.Namespace, settings: Settings) -> int:
    registry = Registry(Client(settings).storage, settings.models)
    pointer = registry.rollback(args.name)
    print(f"{args.name}: production is back to {pointer['version']}")
    return 0
