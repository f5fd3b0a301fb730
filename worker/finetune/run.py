"""One fine-tuning run: the model to start from, the data, the gate, what is published.

:func:`run_finetune` is the whole run (the Celery task is a thin wrapper): list the labelled
data, skip when production came from the very same data and training options (the run's
fingerprint), split the data three ways by a hash of each URI, train (the loop, the modes and
their optimizer groups are in :mod:`rstream.worker.finetune.loop`) choosing the best epoch on the
selection split, then score the candidate and production with the serving preprocessing on
the gate's validation split, which neither training nor the choice of epoch has seen, publish,
and promote only when the candidate is better than production minus ``promote_tolerance``
(a tie keeps production).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from rstream.shared.errors import ModelError, PreconditionFailed
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.shared.training.config import TrainConfig
from rstream.worker.finetune import dataset
from rstream.worker.finetune.evaluation import evaluate, training_dtype
from rstream.worker.finetune.loop import Progress, prepare, train
from rstream.worker.finetune.optimizer import make_optimizer
from rstream.worker.model.device import resolve_device
from rstream.worker.model.loader import LoadedModel, load_model, load_version, save_model
from rstream.worker.model.preprocess import Preprocessing

logger = logging.getLogger(__name__)

DEFAULT_BASE = "torchvision:resnet18:IMAGENET1K_V1"

def load_start(registry: Registry, name: str, start_ref: str | None) -> LoadedModel:
    """The model training starts from: ``start_ref``, else production, else ImageNet weights."""
    if start_ref:
        return load_model(start_ref, registry)
    pointer, _ = registry.read_pointer(name)
    if pointer:
        return load_version(registry, name, str(pointer["version"]))
    try:
        return load_model(DEFAULT_BASE)
    except ModelError as exc:
        raise ModelError(f"{name!r} has no production version to start from, and {exc}; or start "
                         "from a seeded random init explicitly (random:resnet18:seed=0)") from None


def gate(candidate: float, production: float | None, tolerance: float) -> tuple[bool, str]:
    """Whether to promote, and why: better than production minus ``tolerance``. A tie keeps
    production: a new version must earn the swap."""
    if production is None:
        return True, "no production version yet"
    if candidate > production - tolerance:
        return True, (f"validation accuracy {candidate:.4f} > production {production:.4f} "
                      f"- tolerance {tolerance}")
    return False, (f"validation accuracy {candidate:.4f} <= production {production:.4f} "
                   f"- tolerance {tolerance}: published, not promoted")


def _log_progress(epoch: int, step: int, loss: float) -> None:
    logger.debug("epoch %s step %s: loss %.4f", epoch, step, loss)


def run_finetune(settings: Settings, storage: Storage, registry: Registry, name: str,
                 config: TrainConfig, *, start_ref: str | None = None,
                 base_ref: str | None = None, progress: Progress = _log_progress,
                 force: bool = False,
                 columns: tuple[str, str] = ("uri", "label")) -> dict[str, Any]:
    """One fine-tuning run, end to end; a JSON-able summary of what happened and why.
    ``columns``: a labels table's URI and label columns.

    Training starts from ``start_ref``, else production, else ``base_ref`` (only while
    ``name`` has no production version), else ImageNet weights.
    """
    started = time.monotonic()
    items = dataset.list_labelled(storage, settings.train_data, uri_column=columns[0],
                                  label_column=columns[1])
    data_print = dataset.fingerprint(items)
    run_print = dataset.fingerprint(items, config.fingerprint_fields())
    current = registry.read_pointer(name)  # the gate's baseline; promotion is CAS against it
    pointer = current[0]
    skip = None if force else _unchanged(registry, name, pointer, run_print)
    if pointer and skip:
        logger.info("%s", skip)
        return {"status": "skipped", "name": name, "version": pointer["version"],
                "reason": skip, "fingerprint": run_print}
    run = _Run(settings, storage, config, resolve_device(config.device), items)
    start_ref = start_ref or (None if pointer else base_ref)
    production_eval, start = run.score_production(registry, name, pointer, start_ref)
    history, chosen, spec = run.train(start, progress)
    candidate = run.evaluate(LoadedModel(start.module, start.model_id, run.classes, spec,
                                         start.arch))
    production_acc = production_eval["accuracy"] if production_eval else None
    passed, reason = gate(candidate["accuracy"], production_acc, settings.promote_tolerance)
    meta: dict[str, Any] = {
        "fingerprint": run_print,
        "data_fingerprint": data_print,
        "parent": start.model_id,
        "metrics": {"val_accuracy": candidate["accuracy"], "val_loss": candidate["loss"],
                    "val_images": candidate["images"], "per_class": candidate["per_class"],
                    "confusion": candidate["confusion"], "classes": run.classes,
                    "select_accuracy": chosen["accuracy"]},
        "training": {**run.describe(), "history": history, "best_epoch": chosen["epoch"]},
        "gate": {"passed": passed, "promoted": passed, "reason": reason,
                 "tolerance": settings.promote_tolerance,
                 "production_version": pointer["version"] if pointer else None,
                 "production_accuracy": production_acc, "production_eval": production_eval},
        "timings": {"train_s": run.train_s, "total_s": round(time.monotonic() - started, 3)},
    }
    version = save_model(registry, name, start.module.cpu(), arch=start.arch,
                         classes=run.classes, preprocessing=spec, extra=meta)
    status = "trained"
    if passed:
        try:
            registry.promote(name, version, reason, current=current)
            status = "promoted"
        except PreconditionFailed:
            reason = "production changed while this version trained: published, not promoted"
            registry.update_meta(name, version, gate={**meta["gate"], "promoted": False,
                                                      "reason": reason})
    logger.info("%s@%s %s: %s", name, version, status, reason)
    return {"status": status, "name": name, "version": version, "parent": start.model_id,
            "reason": reason, "val_accuracy": candidate["accuracy"],
            "select_accuracy": chosen["accuracy"], "production_accuracy": production_acc,
            "best_epoch": chosen["epoch"], "epochs_run": len(history), "history": history,
            "classes": run.classes, "confusion": candidate["confusion"],
            "per_class": candidate["per_class"],
            "production_per_class": production_eval["per_class"] if production_eval else None,
            "fingerprint": run_print, "train_s": run.train_s}


def _unchanged(registry: Registry, name: str, pointer: dict[str, Any] | None,
               run_print: str) -> str | None:
    """Why training would be pointless (production came from this very data and these very
    options), or None."""
    if not pointer:
        return None
    if registry.read_meta(name, str(pointer["version"])).get("fingerprint") != run_print:
        return None
    return (f"training data and options unchanged since {name}@{pointer['version']} "
            f"(fingerprint {run_print[:12]}): nothing to train")


class _Run:
    """The data, device and config one run shares between its evaluations and its training."""

    def __init__(self, settings: Settings, storage: Storage, config: TrainConfig,
                 device: torch.device, items: Sequence[dataset.LabelledImage]) -> None:
        self.settings, self.storage, self.config, self.device = settings, storage, config, device
        self.classes = dataset.classes_of(items)
        self.splits = dataset.split(items, config.val_percent, config.select_percent)
        self.dtype = training_dtype(device, config.precision)
        self.train_s = 0.0

    def _loader(self, samples: Dataset[dataset.Sample], shuffle: bool) -> DataLoader[Any]:
        c = self.config
        return dataset.loader(samples, batch_size=c.batch_size, workers=c.workers, seed=c.seed,
                               device=self.device, shuffle=shuffle)

    def evaluate(self, model: LoadedModel) -> dict[str, Any]:
        """``model`` on the validation split, with its own classes and serving preprocessing."""
        samples = dataset.eval_dataset(self.storage, self.splits.val, model.classes,
                                        model.preprocessing, self.settings.max_image_pixels,
                                        max_bytes=self.settings.max_object_bytes)
        model.module.to(self.device)
        return evaluate(model.module, self._loader(samples, False), model.preprocessing,
                        model.classes, device=self.device, dtype=self.dtype)

    def score_production(self, registry: Registry, name: str, pointer: dict[str, Any] | None,
                         start_ref: str | None) -> tuple[dict[str, Any] | None, LoadedModel]:
        """Production's evaluation (None without one) and the model to start training from.

        Production is scored first because, without ``start_ref``, it is the start model and
        training changes it in place.
        """
        if not pointer:
            return None, load_start(registry, name, start_ref)
        production = load_version(registry, name, str(pointer["version"]))
        scored = self.evaluate(production)
        production.module.cpu()
        return scored, production if not start_ref else load_start(registry, name, start_ref)

    def train(self, start: LoadedModel, progress: Progress
              ) -> tuple[list[dict[str, Any]], dict[str, Any], Preprocessing]:
        """Train ``start.module`` in place; the history, the best epoch on the selection
        split, the preprocessing."""
        c, pixels = self.config, self.settings.max_image_pixels
        limit = self.settings.max_object_bytes
        base = start.preprocessing
        spec = dataclasses.replace(base, resize=c.resize or base.resize, crop=c.crop or base.crop)
        groups = prepare(start.module, len(self.classes), start.classes != self.classes, c)
        start.module.to(self.device)
        if self.device.type == "cuda":
            start.module.to(memory_format=torch.channels_last)
        augment = dataset.Augmentation(spec.crop, c.crop_scale, c.crop_ratio, c.flip)
        loaders = (
            self._loader(dataset.training_dataset(self.storage, self.splits.train, self.classes,
                                                   augment, pixels, max_bytes=limit),
                         shuffle=True),
            self._loader(dataset.eval_dataset(self.storage, self.splits.select, self.classes,
                                               spec, pixels, max_bytes=limit), shuffle=False))
        began = time.monotonic()
        history, best = train(start.module, make_optimizer(groups, c), loaders=loaders, spec=spec,
                              classes=self.classes, config=c, device=self.device,
                              progress=progress)
        self.train_s = round(time.monotonic() - began, 3)
        return history, best, spec

    def describe(self) -> dict[str, Any]:
        """What the meta records about the run's data, device and hyper-parameters."""
        return {"config": dataclasses.asdict(self.config), "data": self.settings.train_data,
                "train_images": len(self.splits.train),
                "select_images": len(self.splits.select), "val_images": len(self.splits.val),
                "device": str(self.device), "autocast": str(self.dtype or "fp32")}
