"""Fine-tuning learns real labelled images: scikit-learn's digits, rendered as PNG files.

Integration only in that it trains on real files through storage, end to end through
:func:`run_finetune`; it needs no services. From a seeded random init, a short CPU run with
the ``digits`` preset (fewer images and epochs) must reach the pinned validation accuracy, far
above the untrained model's on the same images. The full preset's accuracy on all 1,797
digits is measured by ``bench/train_digits.py`` (docs/performance.md, "Training").
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.shared.training.config import TrainConfig, preset
from rstream.worker.finetune import dataset
from rstream.worker.finetune.evaluation import evaluate
from rstream.worker.finetune.run import run_finetune
from rstream.worker.model.loader import load_model
from rstream.worker.model.preprocess import Preprocessing
from tests.digits import digit_pngs, render_digits
from tests.settings import make_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
logger = logging.getLogger(__name__)

START = "random:resnet18:classes=10:seed=0"
IMAGES = 400  # of 1797: enough to learn, few enough for a short CPU run
CONFIG = TrainConfig(**{**preset("digits"), "epochs": 6, "batch_size": 16, "val_percent": 25,
                        "seed": 0})
# Measured 0.92 on the 100 validation images (seed 0, one thread); seeds 1-3 gave 0.91-0.96,
# so the floor sits under that spread, for CPUs whose rounding differs.
ACCURACY_FLOOR = 0.85
UNTRAINED_CEILING = 0.25  # ten classes: an untrained model is near chance (0.10)


def test_finetune_from_random_init_learns_the_digits(tmp_path: Path) -> None:
    render_digits(tmp_path, IMAGES)
    settings = make_settings(storage_root=str(tmp_path))
    storage = Storage(settings)
    registry = Registry(storage, settings.models)
    started = time.monotonic()

    result = run_finetune(settings, storage, registry, "digits", CONFIG, start_ref=START)

    elapsed = time.monotonic() - started
    untrained = untrained_accuracy(storage, settings.train_data, settings.max_image_pixels)
    logger.warning("digits: validation accuracy %.4f (untrained %.4f), trained in %.1f s "
                   "(run %.1f s)", result["val_accuracy"], untrained, result["train_s"], elapsed)
    assert result["status"] == "promoted", result
    assert result["val_accuracy"] >= ACCURACY_FLOOR
    assert untrained <= UNTRAINED_CEILING
    assert result["val_accuracy"] - untrained >= 0.5
    meta = registry.read_meta("digits", result["version"])
    assert meta["classes"] == [str(d) for d in range(10)]
    assert meta["parent"] == START
    assert len(meta["training"]["history"]) == result["epochs_run"]
    per_class = meta["metrics"]["per_class"]
    val_images = meta["metrics"]["val_images"]
    assert sum(c["count"] for c in per_class.values()) == val_images == 100
    assert sum(c["correct"] for c in per_class.values()) == round(result["val_accuracy"] * 100)


def untrained_accuracy(storage: Storage, source: str, max_pixels: int) -> float:
    """The start model's accuracy, untrained, on the same validation split and preprocessing."""
    items = dataset.list_labelled(storage, source)
    classes = dataset.classes_of(items)
    val = dataset.split(items, CONFIG.val_percent, CONFIG.select_percent).val
    spec = Preprocessing(resize=32, crop=32)
    loader = dataset.loader(
        dataset.eval_dataset(storage, val, classes, spec, max_pixels), batch_size=64,
        workers=0, seed=0, device=torch.device("cpu"), shuffle=False)
    result = evaluate(load_model(START).module, loader, spec, classes,
                      device=torch.device("cpu"), dtype=None)
    return float(result["accuracy"])


def test_labelled_images_list_from_s3_with_their_etags(s3_settings: Settings,
                                                       s3_bucket: str) -> None:
    storage = Storage(s3_settings)
    source = f"s3://{s3_bucket}/train"
    for name, data in digit_pngs(30):
        storage.write(f"{source}/{name}", data)
    storage.write(f"{source}/README.txt", b"beside the class folders")

    items = dataset.list_labelled(storage, source)

    assert len(items) == 30
    assert all(item.uri == f"{source}/{item.label}/{item.uri.rsplit('/', 1)[1]}"
               for item in items)
    assert all(item.tag == storage.stat(item.uri).etag for item in items)
    before = dataset.fingerprint(items)
    storage.write(items[0].uri, list(digit_pngs(31))[-1][1])  # another digit's bytes
    assert dataset.fingerprint(dataset.list_labelled(storage, source)) != before
    classes = dataset.classes_of(items)
    samples = dataset.eval_dataset(storage, items, classes, Preprocessing(36, 32), 10**6)
    image, label = samples[0]  # type: ignore[misc]
    assert image.shape == (3, 32, 32) and classes[label] == items[0].label
