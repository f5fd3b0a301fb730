"""Handlers of the commands that run worker code: score, samples, worker, beat, models export /
import / quantize.

The only producer module that imports ``worker``, and only inside the handlers, so that
``rstream submit`` and the other job commands run on a host without torch.
"""

from __future__ import annotations

import argparse
import importlib.util

from rstream.producer.cli.args import Commands, positive
from rstream.shared.errors import ConfigError
from rstream.shared.settings import Settings

# What the ``worker`` extra installs, as import names.
WORKER_MODULES = ("torch", "torchvision", "safetensors", "numpy", "PIL")


def add_parsers(commands: Commands) -> None:
    """The worker-side commands and their options."""
    p = commands.add_parser("score", help="score images in this process, without Redis "
                            "(needs the worker extra)")
    p.add_argument("source", help="a folder anywhere on this machine, a folder under "
                   "RSTREAM_STORAGE_ROOT, s3://bucket/prefix/, or a list file (.txt/.jsonl)")
    p.add_argument("--model", help="model reference (default: RSTREAM_MODEL)")
    p.add_argument("--out", help="output JSONL file, written whole or not at all "
                   "(default: standard output)")
    p.add_argument("--topk", type=int, help="classes per image (default: RSTREAM_TOPK)")
    p.set_defaults(handler=score_command)

    p = commands.add_parser("samples", help="write sample images made from photos that ship "
                            "with scikit-image and scikit-learn (needs the worker extra)")
    p.add_argument("prefix", help="where to write them: a path under RSTREAM_STORAGE_ROOT or "
                   "s3://bucket/prefix")
    p.add_argument("--count", type=positive, default=64, help="how many (default 64)")
    p.add_argument("--size", help="WIDTHxHEIGHT of every image (default: mixed sizes "
                   "48-400 px, one in four a PNG)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the crops (default 0)")
    p.add_argument("--digits", action="store_true", help="write scikit-learn's 1,797 "
                   "labelled handwritten digits instead: PREFIX/train/{digit}/*.png and "
                   "PREFIX/heldout/{digit}/*.png")
    p.add_argument("--heldout", type=int, default=297, help="with --digits: how many (the "
                   "last ones) go to heldout/ (default 297)")
    p.set_defaults(handler=samples_command)

    p = commands.add_parser("worker", help="start inference workers: one process per GPU, "
                            "supervised (needs the worker extra)")
    p.add_argument("--gpus", help="GPU indices, e.g. 0,1 (default: every GPU nvidia-smi lists; "
                   "none: one process on the CPU)")
    p.add_argument("--cpu", action="store_true", help="one worker on the CPU, even with GPUs")
    p.add_argument("--concurrency", type=positive, help="chunk tasks per process "
                   "(default: RSTREAM_CONCURRENCY; on a GPU at least enough chunks of "
                   "RSTREAM_CHUNK_SIZE for two batches of RSTREAM_MAX_BATCH)")
    p.add_argument("--per-gpu", type=positive, default=1, metavar="N",
                   help="worker processes per GPU (more decode in parallel; default 1)")
    p.add_argument("--train", action="store_true",
                   help="run the trainer instead: one process on the train queue")
    p.set_defaults(handler=worker_command)

    p = commands.add_parser("beat", help="send scheduled fine-tunes at RSTREAM_TRAIN_SCHEDULE "
                            "(needs the worker extra)")
    p.set_defaults(handler=beat_command)


def require_worker_extra(command: str) -> None:
    """ConfigError naming the fix when this host lacks the worker side's packages."""
    missing = [name for name in WORKER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"rstream {command} runs worker code, which needs "
                          f"{', '.join(missing)}: install the worker extra "
                          "(pip install 'rstream[worker]'), or run it on a worker host")


def score_command(args: argparse.Namespace, settings: Settings) -> int:
    require_worker_extra("score")
    from rstream.worker.serving.score import score_command as run

    return run(args, settings)


def samples_command(args: argparse.Namespace, settings: Settings) -> int:
    require_worker_extra("samples")
    from rstream.shared.storage import Storage, join
    from rstream.worker.samples import write_samples

    if args.digits:
        from rstream.worker.samples import write_digits

        train, heldout = write_digits(Storage(settings), args.prefix, args.heldout)
        print(f"wrote {train} labelled digits under {join(args.prefix, 'train')}/ and {heldout} "
              f"held out under {join(args.prefix, 'heldout')}/")
        return 0
    size = None
    if args.size:
        width, _, height = args.size.partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise ConfigError(f"--size {args.size!r} is invalid: use WIDTHxHEIGHT, e.g. 500x375")
        size = (int(width), int(height))
    uris = write_samples(Storage(settings), args.prefix, args.count, size, args.seed)
    print(f"wrote {len(uris)} sample images under {args.prefix}")
    return 0


def worker_command(args: argparse.Namespace, settings: Settings) -> int:
    require_worker_extra("worker")
    from rstream.shared.constants import INFER_QUEUE, TRAIN_QUEUE
    from rstream.worker.runtime import launcher

    gpus = launcher.parse_gpus(args.gpus) if args.gpus else None
    if args.per_gpu < 1:
        raise ConfigError(f"--per-gpu {args.per_gpu} is invalid: use 1 or more")
    if args.train and gpus and len(gpus) > 1:
        raise ConfigError("--train runs one trainer: give it one GPU (--gpus 0)")
    return launcher.run(settings, gpus=gpus[:1] if args.train and gpus else gpus, cpu=args.cpu,
                        queue=TRAIN_QUEUE if args.train else INFER_QUEUE,
                        concurrency=1 if args.train else args.concurrency,
                        one=args.train, per_gpu=args.per_gpu)


def beat_command(args: argparse.Namespace, settings: Settings) -> int:
    require_worker_extra("beat")
    from rstream.worker.runtime import launcher

    return launcher.run_beat(settings)


def models_export_command(args: argparse.Namespace, settings: Settings) -> int:
    """``rstream models export REF --format onnx|torchscript --out FILE``: the model, and a
    JSON file beside it (FILE.json) with its classes and preprocessing."""
    require_worker_extra("models export")
    import json
    import os
    import tempfile

    from rstream.shared.models.registry import Registry
    from rstream.shared.storage import Storage
    from rstream.worker.model.export import export
    from rstream.worker.model.loader import load_model

    out = os.path.abspath(args.out)
    if not os.path.isdir(os.path.dirname(out)):
        raise ConfigError(f"--out {args.out}: the folder {os.path.dirname(out)} does not exist")
    loaded = load_model(args.ref, Registry(Storage(settings), settings.models))
    data = export(loaded, args.format)
    sidecar = {"model": loaded.model_id, "format": args.format, "arch": loaded.arch,
               "input": {"name": "x", "shape": ["N", 3, loaded.preprocessing.crop,
                                                loaded.preprocessing.crop],
                         "dtype": "float32", "normalized": True},
               "output": {"name": "logits", "shape": ["N", len(loaded.classes)]},
               "preprocessing": loaded.preprocessing.to_dict(), "classes": loaded.classes}
    for path, content in ((out, data), (out + ".json", json.dumps(sidecar, indent=2).encode())):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), prefix=".rstream-export-")
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)  # whole or not at all
    print(f"{loaded.model_id}: {args.format} written to {out} ({len(data) / 1e6:.1f} MB), "
          f"classes and preprocessing in {out}.json")
    return 0


def models_quantize_command(args: argparse.Namespace, settings: Settings) -> int:
    """``rstream models quantize REF [--calibration SOURCE]``: the int8 model, built (or found)
    and kept beside the weights; a registry version records it in its meta.json, so workers
    with RSTREAM_PRECISION=int8 load it without a calibration setting of their own."""
    require_worker_extra("models quantize")
    import sys

    from rstream.shared.models import refs
    from rstream.shared.models.registry import Registry
    from rstream.shared.storage import Storage
    from rstream.worker.model import quantize
    from rstream.worker.model.export import cached_onnx
    from rstream.worker.model.loader import load_model

    storage = Storage(settings)
    registry = Registry(storage, settings.models)
    loaded = load_model(args.ref, registry)
    source = args.calibration or settings.calibration
    loaded.meta.pop("int8", None)  # build (or find) for this calibration set, not the recorded
    _, record = quantize.int8_model(loaded, cached_onnx(loaded, registry), registry=registry,
                                    storage=storage, source=source,
                                    max_pixels=settings.max_image_pixels)
    calib = record["calibration"]
    ref = refs.parse(loaded.model_id)
    if ref.kind == "registry" and ref.version:
        registry.update_meta(ref.name, ref.version, int8={
            "key": calib["key"], "calibration": source,
            "top1_agreement": record["top1_agreement"], "held_out": record["held_out"]})
    print(f"{loaded.model_id}: int8 calibrated on {calib['images']} images of "
          f"{calib['source']} (key {calib['key']})\n"
          f"  top-1 agreement with fp32: {record['top1_agreement']:.1%} of "
          f"{record['held_out']} held-out images (max probability difference "
          f"{record['max_prob_diff']:.3f})\n"
          f"  speed-up over ONNX Runtime fp32: {record['speedup_vs_fp32']:.2f}x "
          f"(batch {record['speed_batch']}, {record['threads']} threads)")
    try:
        quantize.check(record, settings.int8_min_agreement, args.ref)
    except ConfigError as exc:
        print(f"rstream: {exc}", file=sys.stderr)
        return 1
    return 0


def models_import_command(args: argparse.Namespace, settings: Settings) -> int:
    require_worker_extra("models import")
    from pathlib import Path

    from rstream.shared.models.registry import Registry
    from rstream.shared.storage import Storage
    from rstream.worker.model.checkpoints import import_checkpoint
    from rstream.worker.model.preprocess import Preprocessing

    registry = Registry(Storage(settings), settings.models)
    version = import_checkpoint(registry, Path(args.file), name=args.model_name, arch=args.arch,
                                labels_path=Path(args.labels),
                                preprocessing=Preprocessing(resize=args.resize, crop=args.crop),
                                promote=args.promote)
    print(f"{args.model_name}@{version}" + (" (now in production)" if args.promote else ""))
    return 0
