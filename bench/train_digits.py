"""Training from a random init on scikit-learn's digits: validation accuracy; prints JSON.

    python -m bench.train_digits [--seeds 0] [--set KEY=VALUE ...] [--threads 2] [--out FILE]

The 1,797 digits (``rstream.worker.samples.digit_pngs``: 32x32 PNG files in class folders) go into a
temporary local storage root, and :func:`rstream.worker.finetune.run.run_finetune` trains a
``random:resnet18:classes=10`` on them, as ``rstream train`` does on a trainer: rstream's own
three-way split (the gate's validation split, the epoch-selection split, the rest to train),
the best epoch chosen on the selection split, the accuracy reported on the gate's split, which
neither training nor the choice of epoch saw. It runs ``rstream train --preset digits``'s
options; each ``--set`` (``mode`` and ``epochs`` included) replaces one of them. For
comparison, a support vector classifier (scikit-learn's ``SVC(gamma=0.001)`` on the 8x8
pixels, its documentation's example) is fitted on the training and selection images and
scored on the same validation images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.report import emit
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.shared.training.config import TrainConfig, check_overrides, preset
from rstream.worker.finetune import dataset
from rstream.worker.finetune.run import run_finetune
from tests.digits import render_digits

PRESET = "digits"  # shared/training/config.py PRESETS: what `rstream train --preset digits` runs


def svm_accuracy(splits: dataset.Splits) -> dict[str, float]:
    """scikit-learn's SVC on the raw 8x8 digits, trained on train + select, scored on val."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    index = {f"{t}/{i:04d}.png": i for i, t in enumerate(digits.target)}

    def rows(items: list[dataset.LabelledImage]) -> list[int]:
        return [index[item.uri.split("/", 1)[1]] for item in items]

    fit_rows, val_rows = rows(splits.train + splits.select), rows(splits.val)
    started = time.monotonic()
    model = SVC(gamma=0.001).fit(digits.data[fit_rows], digits.target[fit_rows])
    accuracy = float(model.score(digits.data[val_rows], digits.target[val_rows]))
    return {"accuracy": round(accuracy, 4), "seconds": round(time.monotonic() - started, 2)}


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (init and order)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="replace one option of the preset")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = {**preset(PRESET), **parse_sets(args.set)}
    mode, epochs = options.pop("mode"), options.pop("epochs")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        render_digits(Path(tmp), 1797)
        settings = Settings.from_env({}, storage_root=tmp, device="cpu")
        storage = Storage(settings)
        for seed in [int(s) for s in args.seeds.split(",")]:
            config = TrainConfig(mode=mode, epochs=epochs,
                                 **check_overrides({**options, "seed": seed}))
            registry = Registry(storage, f"models-{seed}")
            started = time.monotonic()
            result = run_finetune(settings, storage, registry, "digits", config,
                                  start_ref=f"random:resnet18:classes=10:seed={seed}")
            meta = registry.read_meta("digits", result["version"])
            runs.append({"seed": seed, "val_accuracy": round(result["val_accuracy"], 4),
                         "select_accuracy": round(result["select_accuracy"], 4),
                         "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"],
                         "train_s": result["train_s"],
                         "run_s": round(time.monotonic() - started, 1),
                         "history": meta["training"]["history"]})
            print(f"seed {seed}: validation accuracy {result['val_accuracy']:.4f} "
                  f"(selection {result['select_accuracy']:.4f}, best epoch "
                  f"{result['best_epoch']}), {result['train_s']:.0f} s", file=sys.stderr)
        items = dataset.list_labelled(storage, settings.train_data)
        splits = dataset.split(items, config.val_percent, config.select_percent)
    report = {
        "preset": PRESET, "config": {"mode": mode, "epochs": epochs, **options},
        "images": {"train": len(splits.train), "select": len(splits.select),
                   "val": len(splits.val)},
        "runs": runs, "svm_baseline": svm_accuracy(splits),
        "threads": args.threads, "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
    emit(report, args.out)


if __name__ == "__main__":
    main()
