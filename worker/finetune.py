"""Fine-tuning as plain functions: the model to start from, the two modes, training, the gate.

:func:`run_finetune` is the whole run (the Celery task is a thin wrapper): list the labelled
data, skip when production was trained on the very same data, train, evaluate the candidate and
production with the serving preprocessing on the same validation split, publish, and promote
only when the candidate is not worse than production minus ``promote_tolerance``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from shared.errors import ConfigError, ImageError, ModelError
from shared.registry import Registry
from shared.settings import Settings
from shared.storage import PreconditionFailed, Storage
from worker import datasets
from worker.device import resolve_device
from worker.evaluation import autocast, batches, evaluate, training_dtype
from worker.models import LoadedModel, load_model, load_version, save_model
from worker.preprocess import Preprocessing

logger = logging.getLogger(__name__)

MODES = ("feature-extract", "finetune")
DEFAULT_BASE = "torchvision:resnet18:IMAGENET1K_V1"

Progress = Callable[[int, int, float], None]  # (epoch, optimizer step, loss)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one fine-tuning run; recorded in the published meta."""

    mode: str = "finetune"
    epochs: int = 10
    batch_size: int = 32
    accumulation: int = 1  # micro-batches per optimizer step
    lr_fc: float = 1e-2
    lr_layer4: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_grad_norm: float = 5.0
    patience: int = 3  # epochs without a better validation loss before stopping; 0: never
    val_percent: int = 10
    seed: int = 0
    resize: int | None = None  # None: the start model's preprocessing
    crop: int | None = None
    device: str = "auto"
    precision: str = "auto"  # auto: fp16 autocast on CUDA; always fp32 on the CPU
    workers: int = 0  # DataLoader worker processes that fetch and decode
    unfreeze: tuple[str, ...] = ()  # finetune mode: more blocks (e.g. layer3) at lr_layer4

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"training mode {self.mode!r} is unknown: use {' or '.join(MODES)}")
        if self.unfreeze and self.mode != "finetune":
            raise ConfigError("unfreeze only applies to mode finetune: drop it or change the mode")
        if min(self.epochs, self.batch_size, self.accumulation) < 1:
            raise ConfigError("epochs, batch_size and accumulation must be at least 1")
        if not 0 < self.val_percent < 100:
            raise ConfigError(f"val_percent={self.val_percent} must lie between 1 and 99")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ConfigError(f"precision {self.precision!r} is unknown: use auto, fp32, fp16 "
                              "or bf16")


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


def prepare(module: nn.Module, num_classes: int, new_fc: bool,
            config: TrainConfig) -> list[dict[str, Any]]:
    """Freeze ``module`` for ``config.mode`` (a new ``fc`` when asked); its parameter groups."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    if new_fc or config.mode == "feature-extract":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            module.fc = nn.Linear(cast(nn.Linear, module.fc).in_features, num_classes)
    blocks = ("layer4", *config.unfreeze) if config.mode == "finetune" else ()
    groups: list[dict[str, Any]] = []
    for name in ("fc", *blocks):
        params = list(_block(module, name).parameters())
        for parameter in params:
            parameter.requires_grad_(True)
        groups.append({"name": name, "params": params,
                       "lr": config.lr_fc if name == "fc" else config.lr_layer4})
    return groups


def _block(module: nn.Module, name: str) -> nn.Module:
    block = getattr(module, name, None)
    if not isinstance(block, nn.Module):
        raise ConfigError(f"the model has no block {name!r}: unfreeze layer1, layer2 or layer3")
    return block


def set_train_mode(module: nn.Module) -> None:
    """Train mode, except BatchNorm layers that have nothing to train: their stats stay put."""
    module.train()
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in layer.parameters(recurse=False)):
            layer.eval()


def train_epoch(module: nn.Module, loader: DataLoader[Any], spec: Preprocessing, *,
                optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                config: TrainConfig, device: torch.device, epoch: int,
                progress: Progress) -> dict[str, float]:
    """One pass over the training data with accumulation and clipping; its loss and accuracy."""
    set_train_mode(module)
    dtype = training_dtype(device, config.precision)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    loss_sum = torch.zeros((), device=device)
    right, seen, step, pending = 0, 0, 0, 0
    optimizer.zero_grad(set_to_none=True)
    for images, labels in batches(loader, spec, device):
        with autocast(device, dtype):
            logits = module(images)
            loss = F.cross_entropy(logits.float(), labels)
        scaler.scale(loss / config.accumulation).backward()
        pending += 1
        loss_sum += loss.detach() * len(labels)
        right += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        if pending == config.accumulation:
            step += 1
            _step(optimizer, scaler, trainable, config.max_grad_norm)
            pending = 0
            progress(epoch, step, float(loss.detach()))
    if pending:  # the epoch's last, partial accumulation
        _step(optimizer, scaler, trainable, config.max_grad_norm)
        progress(epoch, step + 1, float(loss.detach()))
    return {"loss": float(loss_sum) / max(seen, 1), "accuracy": right / max(seen, 1)}


def _step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
          trainable: list[nn.Parameter], max_norm: float) -> None:
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(trainable, max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def make_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum over the parameter groups, each with its own learning rate."""
    return torch.optim.SGD(groups, lr=config.lr_fc, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def train(module: nn.Module, optimizer: torch.optim.Optimizer, *,
          loaders: tuple[DataLoader[Any], DataLoader[Any]], spec: Preprocessing,
          classes: Sequence[str], config: TrainConfig, device: torch.device,
          progress: Progress) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train with early stopping on validation loss; ``module`` ends with the best epoch's weights.

    Returns the per-epoch history and the best epoch's validation result.
    """
    torch.manual_seed(config.seed)  # the augmentation draws from the global generator
    dtype = training_dtype(device, config.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    best_state: dict[str, torch.Tensor] = {}
    for epoch in range(1, config.epochs + 1):
        started = time.monotonic()
        fit = train_epoch(module, loaders[0], spec, optimizer=optimizer, scaler=scaler,
                          config=config, device=device, epoch=epoch, progress=progress)
        val = evaluate(module, loaders[1], spec, classes, device=device, dtype=dtype)
        if val["loss"] is None:
            raise ImageError("no validation image could be decoded: see the warnings above")
        history.append({"epoch": epoch, "train_loss": fit["loss"], "train_accuracy":
                        fit["accuracy"], "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                        "seconds": round(time.monotonic() - started, 3)})
        logger.info("epoch %s: train loss %.4f acc %.4f, val loss %.4f acc %.4f", epoch,
                    fit["loss"], fit["accuracy"], val["loss"], val["accuracy"])
        if not best or val["loss"] < best["loss"]:
            best = {**val, "epoch": epoch}
            best_state = {k: v.detach().to("cpu", copy=True)
                          for k, v in module.state_dict().items()}
        elif config.patience and epoch - best["epoch"] >= config.patience:
            logger.info("early stop: no better validation loss since epoch %s", best["epoch"])
            break
    module.load_state_dict(best_state)
    return history, best


def gate(candidate: float, production: float | None, tolerance: float) -> tuple[bool, str]:
    """Whether to promote, and why: not worse than production minus ``tolerance``."""
    if production is None:
        return True, "no production version yet"
    if candidate >= production - tolerance:
        return True, (f"validation accuracy {candidate:.4f} >= production {production:.4f} "
                      f"- tolerance {tolerance}")
    return False, (f"validation accuracy {candidate:.4f} < production {production:.4f} "
                   f"- tolerance {tolerance}: published, not promoted")


def _log_progress(epoch: int, step: int, loss: float) -> None:
    logger.debug("epoch %s step %s: loss %.4f", epoch, step, loss)


def run_finetune(settings: Settings, storage: Storage, registry: Registry, name: str,
                 config: TrainConfig, *, start_ref: str | None = None,
                 base_ref: str | None = None, progress: Progress = _log_progress,
                 force: bool = False) -> dict[str, Any]:
    """One fine-tuning run, end to end; a JSON-able summary of what happened and why.

    Training starts from ``start_ref``, else production, else ``base_ref`` (only while
    ``name`` has no production version), else ImageNet weights.
    """
    started = time.monotonic()
    items = datasets.list_labelled(storage, settings.train_data)
    data_print = datasets.fingerprint(items)
    current = registry.read_pointer(name)  # the gate's baseline; promotion is CAS against it
    pointer = current[0]
    skip = None if force else _unchanged(registry, name, pointer, data_print)
    if pointer and skip:
        logger.info("%s", skip)
        return {"status": "skipped", "name": name, "version": pointer["version"],
                "reason": skip, "fingerprint": data_print}
    run = _Run(settings, storage, config, resolve_device(config.device), items)
    start_ref = start_ref or (None if pointer else base_ref)
    production_eval, start = run.score_production(registry, name, pointer, start_ref)
    history, best, spec = run.train(start, progress)
    production_acc = production_eval["accuracy"] if production_eval else None
    passed, reason = gate(best["accuracy"], production_acc, settings.promote_tolerance)
    meta: dict[str, Any] = {
        "fingerprint": data_print,
        "parent": start.version,
        "metrics": {"val_accuracy": best["accuracy"], "val_loss": best["loss"],
                    "val_images": best["images"], "per_class": best["per_class"]},
        "training": {**run.describe(), "history": history, "best_epoch": best["epoch"]},
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
    return {"status": status, "name": name, "version": version, "parent": start.version,
            "reason": reason, "val_accuracy": best["accuracy"],
            "production_accuracy": production_acc, "best_epoch": best["epoch"],
            "epochs_run": len(history), "fingerprint": data_print, "train_s": run.train_s}


def _unchanged(registry: Registry, name: str, pointer: dict[str, Any] | None,
               data_print: str) -> str | None:
    """Why training would be pointless (production saw this very data), or None."""
    if not pointer:
        return None
    if registry.read_meta(name, str(pointer["version"])).get("fingerprint") != data_print:
        return None
    return (f"training data unchanged since {name}@{pointer['version']} "
            f"(fingerprint {data_print[:12]}): nothing to train")


class _Run:
    """The data, device and config one run shares between its evaluations and its training."""

    def __init__(self, settings: Settings, storage: Storage, config: TrainConfig,
                 device: torch.device, items: Sequence[datasets.LabelledImage]) -> None:
        self.settings, self.storage, self.config, self.device = settings, storage, config, device
        self.classes = datasets.classes_of(items)
        self.train_items, self.val_items = datasets.split(items, config.val_percent)
        self.dtype = training_dtype(device, config.precision)
        self.train_s = 0.0

    def _loader(self, dataset: Dataset[datasets.Sample], shuffle: bool) -> DataLoader[Any]:
        c = self.config
        return datasets.loader(dataset, batch_size=c.batch_size, workers=c.workers, seed=c.seed,
                               device=self.device, shuffle=shuffle)

    def evaluate(self, model: LoadedModel) -> dict[str, Any]:
        """``model`` on the validation split, with its own classes and serving preprocessing."""
        dataset = datasets.eval_dataset(self.storage, self.val_items, model.classes,
                                        model.preprocessing, self.settings.max_image_pixels)
        model.module.to(self.device)
        return evaluate(model.module, self._loader(dataset, False), model.preprocessing,
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
        """Train ``start.module`` in place; the history, the best epoch, the preprocessing."""
        c, pixels = self.config, self.settings.max_image_pixels
        base = start.preprocessing
        spec = dataclasses.replace(base, resize=c.resize or base.resize, crop=c.crop or base.crop)
        groups = prepare(start.module, len(self.classes), start.classes != self.classes, c)
        start.module.to(self.device)
        if self.device.type == "cuda":
            start.module.to(memory_format=torch.channels_last)
        loaders = (
            self._loader(datasets.training_dataset(self.storage, self.train_items, self.classes,
                                                   spec, pixels), shuffle=True),
            self._loader(datasets.eval_dataset(self.storage, self.val_items, self.classes, spec,
                                               pixels), shuffle=False))
        began = time.monotonic()
        history, best = train(start.module, make_optimizer(groups, c), loaders=loaders, spec=spec,
                              classes=self.classes, config=c, device=self.device,
                              progress=progress)
        self.train_s = round(time.monotonic() - began, 3)
        return history, best, spec

    def describe(self) -> dict[str, Any]:
        """What the meta records about the run's data, device and hyper-parameters."""
        return {"config": dataclasses.asdict(self.config), "data": self.settings.train_data,
                "train_images": len(self.train_items), "val_images": len(self.val_items),
                "device": str(self.device), "autocast": str(self.dtype or "fp32")}
