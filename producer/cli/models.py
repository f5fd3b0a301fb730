"""Handlers of the model and training commands: train, models ls / promote / rollback
(export, import and quantize run worker code: producer/cli/worker.py).

No torch: training runs on a trainer (``rstream worker --train``); these commands send it work
and read the registry in storage.
"""

from __future__ import annotations

import argparse
import json
import sys

from rstream.producer import monitor, training
from rstream.producer.cli.args import Commands, positive
from rstream.producer.cli.worker import (
    models_export_command,
    models_import_command,
    models_quantize_command,
)
from rstream.producer.client import Client
from rstream.shared.errors import ConfigError
from rstream.shared.models.refs import ARCHS
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.training.config import MODES, PRESETS
from rstream.shared.training.runs import TrainRuns, run_report


def add_parsers(commands: Commands) -> None:
    """The model and training commands and their options."""
    p = commands.add_parser("train", help="fine-tune now on a trainer (rstream worker --train), "
                            "or follow a run: rstream train status RUN")
    p.add_argument("action", nargs="?", choices=("status",),
                   help="status: show (with --wait: follow) the run RUN")
    p.add_argument("run", nargs="?", help="with status: the run id `rstream train` printed")
    p.add_argument("--json", action="store_true", help="with status: the run record as JSON "
                   "(default: text, with the epochs and the confusion matrix)")
    p.add_argument("--name", help="model name to train and publish (default: "
                   "RSTREAM_TRAIN_MODEL)")
    p.add_argument("--data", help="labelled images, {data}/{class}/* or a labels table "
                   "(.csv/.jsonl/.ndjson/.parquet; default: RSTREAM_TRAIN_DATA)")
    p.add_argument("--uri-column", help="with a labels table as --data: its column of "
                   "image URIs (default: uri)")
    p.add_argument("--label-column", help="with a labels table as --data: its column of "
                   "class labels (default: label)")
    p.add_argument("--mode", choices=MODES, help="train a new fc only, layer4 + fc, or every "
                   "layer (default: RSTREAM_TRAIN_MODE)")
    p.add_argument("--epochs", type=positive, help="most epochs (default: "
                   "RSTREAM_TRAIN_EPOCHS)")
    p.add_argument("--start", help="start from this model reference instead of production "
                   "(default: production, else RSTREAM_TRAIN_BASE)")
    p.add_argument("--force", action="store_true", help="train even if production was "
                   "trained on the same data")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named set of options "
                   "(digits: 32 px glyphs from a random init); --mode, --epochs and --set "
                   "override its own")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="advanced: a training option, repeatable, checked here (e.g. "
                   "--set resize=36 --set crop=32 --set batch_size=16)")
    p.add_argument("--wait", action="store_true", help="follow the run with a progress bar")
    p.set_defaults(handler=train_command)

    models = commands.add_parser("models", help="the model registry under RSTREAM_MODELS"
                                 ).add_subparsers(dest="models_command", required=True,
                                                  metavar="ACTION")
    p = models.add_parser("ls", help="versions, their accuracy, and which serves (*)")
    p.add_argument("name", nargs="?", help="one model (default: every model)")
    p.set_defaults(handler=models_ls_command)
    p = models.add_parser("promote", help="make NAME@VERSION the production version")
    p.add_argument("ref", metavar="NAME@VERSION", help="the version to serve")
    p.set_defaults(handler=models_promote_command)
    p = models.add_parser("rollback", help="production back to the previous version")
    p.add_argument("name", help="the model whose production goes back")
    p.set_defaults(handler=models_rollback_command)
    p = models.add_parser("export", help="write a model to an ONNX or TorchScript file, with "
                          "its classes and preprocessing beside it (needs the worker extra)")
    p.add_argument("ref", metavar="REF", help="a model reference: NAME, NAME@VERSION, "
                   "torchvision:ARCH:WEIGHTS or random:ARCH")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx (torch's current exporter) or torchscript (default onnx)")
    p.add_argument("--out", required=True, help="the file to write (and FILE.json beside it)")
    p.set_defaults(handler=models_export_command)
    p = models.add_parser("quantize", help="build a model's int8 version (RSTREAM_PRECISION="
                          "int8) now, and show its agreement with fp32 and its speed-up (needs "
                          "the worker extra)")
    p.add_argument("ref", metavar="REF", help="a model reference: NAME, NAME@VERSION, "
                   "torchvision:ARCH:WEIGHTS or random:ARCH")
    p.add_argument("--calibration", metavar="SOURCE", default="",
                   help="images like the ones you score: a folder, s3://bucket/prefix, or a "
                   ".txt/.jsonl list of URIs (default: RSTREAM_CALIBRATION, else the model's "
                   "validation split when it came from rstream train)")
    p.set_defaults(handler=models_quantize_command)
    p = models.add_parser("import", help="publish a state_dict from your own torchvision "
                          "training script as a new version (needs the worker extra)")
    p.add_argument("file", help=".pt/.pth (read with torch.load(weights_only=True)) or "
                   ".safetensors: a state_dict, alone or under \"model\" / \"state_dict\"")
    p.add_argument("--name", required=True, dest="model_name",
                   help="the model name to publish under")
    p.add_argument("--arch", required=True, choices=ARCHS, help="the torchvision architecture")
    p.add_argument("--labels", required=True, help="class names in output order: one per line, "
                   "or a .json list")
    p.add_argument("--promote", action="store_true", help="make it the production version")
    p.add_argument("--resize", type=positive, default=256,
                   help="eval transform: shorter side resized to this (default 256)")
    p.add_argument("--crop", type=positive, default=224,
                   help="eval transform: center crop (default 224)")
    p.set_defaults(handler=models_import_command)


def train_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "status":
        return _train_status(args, settings)
    if args.action or args.run:
        raise ConfigError(f"unexpected argument {args.action or args.run!r}: use `rstream train "
                          "[OPTIONS]` to start a run, `rstream train status RUN` to follow one")
    options = training.checked_options(
        settings, name=args.name, mode=args.mode, epochs=args.epochs, start=args.start,
        force=args.force, data=args.data, overrides=_training_options(args.set),
        uri_column=args.uri_column, label_column=args.label_column,
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
    print(json.dumps(state, indent=2, default=str) if args.json else run_report(args.run, state))
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
