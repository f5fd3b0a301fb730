"""The ``rstream`` command line: the parser and ``main``.

The handlers live in modules named for the two sides: ``producer.job_commands`` and
``producer.model_commands`` (no torch), and ``producer.worker_commands``, the only one that
starts worker code. Each is imported when its command runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence

import redis

from shared.connections import redis_problem
from shared.errors import ConfigError, RstreamError
from shared.finetune_config import MODES, PRESETS
from shared.logs import configure
from shared.modelref import ARCHS
from shared.settings import Settings, markdown_table

Handler = Callable[[argparse.Namespace, Settings], int]


def _config(args: argparse.Namespace, settings: Settings) -> int:
    if args.markdown:
        print(markdown_table())
    else:
        for name, value in settings.shown().items():
            print(f"{name}={value}")
    return 0


def _lazy(module: str, name: str) -> Handler:
    """Handler ``name`` of ``producer.{module}``, imported when it runs: Celery is slow to
    import, and only the worker commands may import worker code (torch)."""

    def handler(args: argparse.Namespace, settings: Settings) -> int:
        run: Handler = getattr(importlib.import_module(f"producer.{module}"), name)
        return run(args, settings)

    return handler


def _jobs(name: str) -> Handler:
    return _lazy("job_commands", name)


def _models(name: str) -> Handler:
    return _lazy("model_commands", name)


def _workers(name: str) -> Handler:
    return _lazy("worker_commands", name)


def _positive(text: str) -> int:
    """argparse type: an integer >= 1, with the reason when it is not."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def _seconds(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rstream", description="Batch image classification over Redis and Celery. "
        "Every default comes from an RSTREAM_* setting: `rstream config` shows them.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("config", help="print the settings in effect (validated; "
                            "passwords masked)")
    p.add_argument("--markdown", action="store_true", help="print the README's table instead")
    p.set_defaults(handler=_config)

    _add_job_commands(commands)
    _add_watch_command(commands)
    _add_model_commands(commands)
    _add_worker_commands(commands)

    p = commands.add_parser("api", help="serve the HTTP API and the jobs dashboard "
                            "(needs the api extra)")
    p.add_argument("--host", help="address to listen on (default: RSTREAM_API_HOST); "
                   "anything but 127.0.0.1 needs RSTREAM_API_TOKENS")
    p.add_argument("--port", type=_positive, help="port (default: RSTREAM_API_PORT)")
    p.set_defaults(handler=_api)

    p = commands.add_parser("exporter", help="serve the queues' metrics for Prometheus: "
                            "run one per Redis (no torch needed)")
    p.add_argument("--port", type=_positive, help="port of /metrics, /healthz and /readyz "
                   "(default: RSTREAM_EXPORTER_PORT)")
    p.set_defaults(handler=_lazy("exporter", "exporter_command"))
    return parser


def _api(args: argparse.Namespace, settings: Settings) -> int:
    missing = [name for name in ("fastapi", "uvicorn", "pydantic", "prometheus_client")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"rstream api needs {', '.join(missing)}: install the api extra "
                          "(pip install 'rstream[api]')")
    handler: Handler = _lazy("http_api", "api_command")
    return handler(args, settings)


def _add_worker_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("score", help="score images in this process, without Redis "
                            "(needs the worker extra)")
    p.add_argument("source", help="a folder anywhere on this machine, a folder under "
                   "RSTREAM_STORAGE_ROOT, s3://bucket/prefix/, or a list file (.txt/.jsonl)")
    p.add_argument("--model", help="model reference (default: RSTREAM_MODEL)")
    p.add_argument("--out", help="output JSONL file, written whole or not at all "
                   "(default: standard output)")
    p.add_argument("--topk", type=int, help="classes per image (default: RSTREAM_TOPK)")
    p.set_defaults(handler=_workers("score_command"))

    p = commands.add_parser("samples", help="write sample images made from photos that ship "
                            "with scikit-image and scikit-learn (needs the worker extra)")
    p.add_argument("prefix", help="where to write them: a path under RSTREAM_STORAGE_ROOT or "
                   "s3://bucket/prefix")
    p.add_argument("--count", type=_positive, default=64, help="how many (default 64)")
    p.add_argument("--size", help="WIDTHxHEIGHT of every image (default: mixed sizes "
                   "48-400 px, one in four a PNG)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the crops (default 0)")
    p.add_argument("--digits", action="store_true", help="write scikit-learn's 1,797 "
                   "labelled handwritten digits instead: PREFIX/train/{digit}/*.png and "
                   "PREFIX/heldout/{digit}/*.png")
    p.add_argument("--heldout", type=int, default=297, help="with --digits: how many (the "
                   "last ones) go to heldout/ (default 297)")
    p.set_defaults(handler=_workers("samples_command"))

    p = commands.add_parser("worker", help="start inference workers: one process per GPU, "
                            "supervised (needs the worker extra)")
    p.add_argument("--gpus", help="GPU indices, e.g. 0,1 (default: every GPU nvidia-smi lists; "
                   "none: one process on the CPU)")
    p.add_argument("--cpu", action="store_true", help="one worker on the CPU, even with GPUs")
    p.add_argument("--concurrency", type=_positive, help="chunk tasks per process "
                   "(default: RSTREAM_CONCURRENCY; on a GPU at least enough chunks of "
                   "RSTREAM_CHUNK_SIZE for two batches of RSTREAM_MAX_BATCH)")
    p.add_argument("--per-gpu", type=_positive, default=1, metavar="N",
                   help="worker processes per GPU (more decode in parallel; default 1)")
    p.add_argument("--train", action="store_true",
                   help="run the trainer instead: one process on the train queue")
    p.set_defaults(handler=_workers("worker_command"))

    p = commands.add_parser("beat", help="send scheduled fine-tunes at RSTREAM_TRAIN_SCHEDULE "
                            "(needs the worker extra)")
    p.set_defaults(handler=_workers("beat_command"))


def _add_model_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("train", help="fine-tune now on a trainer (rstream worker --train), "
                            "or follow a run: rstream train status RUN")
    p.add_argument("action", nargs="?", choices=("status",),
                   help="status: show (with --wait: follow) the run RUN")
    p.add_argument("run", nargs="?", help="with status: the run id `rstream train` printed")
    p.add_argument("--name", help="model name to train and publish (default: "
                   "RSTREAM_TRAIN_MODEL)")
    p.add_argument("--data", help="labelled images, {data}/{class}/* or a JSONL labels "
                   "manifest (default: RSTREAM_TRAIN_DATA)")
    p.add_argument("--mode", choices=MODES, help="train a new fc only, layer4 + fc, or every "
                   "layer (default: RSTREAM_TRAIN_MODE)")
    p.add_argument("--epochs", type=_positive, help="most epochs (default: "
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
    p.set_defaults(handler=_models("train_command"))

    models = commands.add_parser("models", help="the model registry under RSTREAM_MODELS"
                                 ).add_subparsers(dest="models_command", required=True,
                                                  metavar="ACTION")
    p = models.add_parser("ls", help="versions, their accuracy, and which serves (*)")
    p.add_argument("name", nargs="?", help="one model (default: every model)")
    p.set_defaults(handler=_models("models_ls_command"))
    p = models.add_parser("promote", help="make NAME@VERSION the production version")
    p.add_argument("ref", metavar="NAME@VERSION", help="the version to serve")
    p.set_defaults(handler=_models("models_promote_command"))
    p = models.add_parser("rollback", help="production back to the previous version")
    p.add_argument("name", help="the model whose production goes back")
    p.set_defaults(handler=_models("models_rollback_command"))
    p = models.add_parser("export", help="write a model to an ONNX or TorchScript file, with "
                          "its classes and preprocessing beside it (needs the worker extra)")
    p.add_argument("ref", metavar="REF", help="a model reference: NAME, NAME@VERSION, "
                   "torchvision:ARCH:WEIGHTS or random:ARCH")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx (torch's current exporter) or torchscript (default onnx)")
    p.add_argument("--out", required=True, help="the file to write (and FILE.json beside it)")
    p.set_defaults(handler=_workers("models_export_command"))
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
    p.add_argument("--resize", type=_positive, default=256,
                   help="eval transform: shorter side resized to this (default 256)")
    p.add_argument("--crop", type=_positive, default=224,
                   help="eval transform: center crop (default 224)")
    p.set_defaults(handler=_workers("models_import_command"))


def _add_job_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("submit", help="submit a folder, a list file or a prefix for "
                            "scoring; prints the job id first")
    p.add_argument("source", help="a folder under RSTREAM_STORAGE_ROOT, s3://bucket/prefix/, "
                   "or a list file (.txt/.jsonl/.list/.manifest) of URIs")
    p.add_argument("--job", help="job id (default: generated); the same id and arguments "
                   "continue the job from its input record")
    p.add_argument("--model", help="model reference (default: RSTREAM_MODEL)")
    p.add_argument("--chunk-size", type=_positive, help="images per task (default: "
                   "RSTREAM_CHUNK_SIZE)")
    p.add_argument("--wait", action="store_true", help="then wait for the job with a progress "
                   "bar")
    p.add_argument("--strict", action="store_true", help="with --wait: exit 1 if any image failed")
    p.set_defaults(handler=_jobs("submit_command"))

    p = commands.add_parser("status", help="a job's counts, rate and ETA, and what it waits "
                            "for; without a job, the watches")
    p.add_argument("job", nargs="?", help="the job id (none: every watch, its lag and open "
                   "windows)")
    p.add_argument("--json", action="store_true", help="print the record as JSON")
    p.set_defaults(handler=_jobs("status_command"))

    p = commands.add_parser("wait", help="wait for a job with a progress bar")
    p.add_argument("job", help="the job id")
    p.add_argument("--strict", action="store_true", help="exit 1 if any image failed")
    p.set_defaults(handler=_jobs("wait_command"))

    p = commands.add_parser("results", help="stream a job's result lines (JSONL)")
    p.add_argument("job", help="the job id")
    p.add_argument("--failed", action="store_true", help="only the failed images")
    p.set_defaults(handler=_jobs("results_command"))

    p = commands.add_parser("cancel", help="skip a job's queued chunks (running ones finish)")
    p.add_argument("job", help="the job id")
    p.set_defaults(handler=_jobs("cancel_command"))

    p = commands.add_parser("retry", help="resubmit a finished job's failed images")
    p.add_argument("job", help="the job id")
    p.add_argument("--wait", action="store_true", help="wait for the retry")
    p.add_argument("--strict", action="store_true", help="with --wait: exit 1 if any still fail")
    p.set_defaults(handler=_jobs("retry_command"))

    p = commands.add_parser("resume", help="send again the recorded chunks of a job that are "
                            "not done, and finish a submission that stopped")
    p.add_argument("job", help="the job id")
    p.add_argument("--wait", action="store_true", help="wait for the job")
    p.add_argument("--strict", action="store_true", help="with --wait: exit 1 if any image failed")
    p.set_defaults(handler=_jobs("resume_command"))

    p = commands.add_parser("jobs", help="recent jobs, newest first")
    p.add_argument("--limit", type=_positive, default=20, help="how many (default 20)")
    p.set_defaults(handler=_jobs("jobs_command"))

    p = commands.add_parser("dead-letters",
                            help="task messages the workers refused, newest first, with why")
    p.add_argument("--limit", type=_positive, default=20, help="how many to show (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON object per line, raw included")
    p.add_argument("--clear", action="store_true", help="delete them all (after showing them)")
    p.set_defaults(handler=_jobs("dead_letters_command"))


def _add_watch_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.add_argument("--interval", type=_seconds, default=10.0, metavar="S",
                   help="seconds between two listings of the folder (default 10)")
    p.add_argument("--window", type=_positive, default=3600, metavar="S",
                   help="seconds per window job, a divisor of a day (default 3600: a job "
                   "per hour)")
    p.add_argument("--ordered", action="store_true", help="new keys always sort after the "
                   "old ones: list only after the last key seen (S3 StartAfter) instead of "
                   "the whole folder; rewritten objects are then not seen")
    p.add_argument("--chunk-size", type=_positive, help="images per task (default: "
                   "RSTREAM_CHUNK_SIZE)")
    p.add_argument("--metrics-port", type=_positive, metavar="PORT", help="serve Prometheus "
                   "metrics (lag, objects, open windows) on this port (needs "
                   "prometheus-client)")
    p.set_defaults(handler=_lazy("watch_commands", "watch_command"))


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


if __name__ == "__main__":
    sys.exit(main())
