"""The training loop: freezing per mode, epochs with AMP, clipping and out-of-memory splits.

Plain functions on a module and data loaders; :mod:`rstream.worker.finetune.run` runs them for a
model in the registry and decides what to publish. The optimizer and its schedule are in
:mod:`rstream.worker.finetune.optimizer`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from rstream.shared.errors import ConfigError, ImageError
from rstream.shared.training.config import TrainConfig
from rstream.worker.finetune.evaluation import autocast, batches, evaluate, training_dtype
from rstream.worker.finetune.optimizer import make_schedule
from rstream.worker.model.preprocess import Preprocessing

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]  # (epoch, optimizer step, loss)
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # a DataLoader of (uint8 images, labels)


def prepare(module: nn.Module, num_classes: int, new_fc: bool,
            config: TrainConfig) -> list[dict[str, Any]]:
    """Freeze ``module`` for ``config.mode`` (a new ``fc`` when asked); its parameter groups."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    if new_fc or config.mode == "feature-extract":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            module.fc = nn.Linear(cast(nn.Linear, module.fc).in_features, num_classes)
    if config.mode == "full":
        blocks: tuple[str, ...] = tuple(name for name, _ in module.named_children()
                                        if name != "fc")
    else:
        blocks = ("layer4", *config.unfreeze) if config.mode == "finetune" else ()
    groups: list[dict[str, Any]] = []
    for name in ("fc", *blocks):
        params = list(_block(module, name).parameters())
        for parameter in params:
            parameter.requires_grad_(True)
        lr = config.lr_fc if name == "fc" or config.mode == "full" else config.lr_layer4
        groups.append({"name": name, "params": params, "lr": lr})
    return [group for group in groups if group["params"]]


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


@dataclass
class Stepper:
    """What one run's optimizer steps share: the optimizer, its schedule, the AMP scaler, and
    how many pieces each batch is split into (doubled after a CUDA out-of-memory error)."""

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    config: TrainConfig
    pieces: int = 1

    def step(self) -> None:
        """Unscale, clip (unless ``max_grad_norm`` is 0), step, advance the schedule."""
        self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm:
            trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(trainable, self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()


def train_epoch(module: nn.Module, loader: Batches, spec: Preprocessing, *, stepper: Stepper,
                device: torch.device, epoch: int, progress: Progress) -> dict[str, float]:
    """One pass over the training data with accumulation and clipping; its loss and accuracy.

    A batch that runs out of CUDA memory is split in two, then four..., for the rest of the
    run: the step's gradient is the same, its memory smaller. The gradients of the optimizer
    step in progress are dropped (a failed backward may have added part of them).
    """
    config = stepper.config
    set_train_mode(module)
    dtype = training_dtype(device, config.precision)
    loss_sum, right, seen, step, pending, loss = 0.0, 0, 0, 0, 0, 0.0
    stepper.optimizer.zero_grad(set_to_none=True)
    for images, labels in batches(loader, spec, device):
        while True:
            try:
                loss, hits = _forward_backward(module, images, labels, stepper=stepper,
                                               dtype=dtype, device=device)
                break
            except torch.cuda.OutOfMemoryError:
                if stepper.pieces >= len(labels):
                    raise
                stepper.pieces *= 2
                stepper.optimizer.zero_grad(set_to_none=True)
                logger.warning("out of memory on a batch of %d images: trying again in %d "
                               "pieces of about %d (dropping the gradients of %d earlier "
                               "micro-batches of this step)", len(labels), stepper.pieces,
                               math.ceil(len(labels) / stepper.pieces), pending)
                pending = 0
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        pending += 1
        loss_sum += loss * len(labels)
        right += hits
        seen += len(labels)
        if pending == config.accumulation:
            step += 1
            stepper.step()
            pending = 0
            progress(epoch, step, loss)
    if pending:  # the epoch's last, partial accumulation
        stepper.step()
        progress(epoch, step + 1, loss)
    return {"loss": loss_sum / max(seen, 1), "accuracy": right / max(seen, 1)}


def _forward_backward(module: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                      stepper: Stepper, dtype: torch.dtype | None,
                      device: torch.device) -> tuple[float, int]:
    """Gradients of one batch, in ``stepper.pieces`` pieces; its mean loss and correct count."""
    config = stepper.config
    loss_sum, hits = 0.0, 0
    for part, part_labels in zip(images.tensor_split(stepper.pieces),
                                 labels.tensor_split(stepper.pieces), strict=True):
        if not len(part_labels):
            continue
        with autocast(device, dtype):
            logits = module(part)
            loss = F.cross_entropy(logits.float(), part_labels,
                                   label_smoothing=config.label_smoothing)
        share = len(part_labels) / len(labels) / config.accumulation
        stepper.scaler.scale(loss * share).backward()
        loss_sum += float(loss.detach()) * len(part_labels)
        hits += int((logits.argmax(1) == part_labels).sum())
    return loss_sum / len(labels), hits


def train(module: nn.Module, optimizer: torch.optim.Optimizer, *,
          loaders: tuple[Batches, Batches], spec: Preprocessing, classes: Sequence[str],
          config: TrainConfig, device: torch.device,
          progress: Progress) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train, scoring every epoch on the selection split (``loaders[1]``); ``module`` ends with
    the weights of the best epoch there (accuracy, then loss), and stops early after
    ``patience`` epochs without a better one.

    Returns the per-epoch history and the best epoch's selection result.
    """
    torch.manual_seed(config.seed)  # the augmentation draws from the global generator
    dtype = training_dtype(device, config.precision)
    steps = math.ceil(len(cast(Sequence[Any], loaders[0])) / config.accumulation)
    stepper = Stepper(optimizer, make_schedule(optimizer, config, steps),
                      torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), config)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    best_state: dict[str, torch.Tensor] = {}
    for epoch in range(1, config.epochs + 1):
        started = time.monotonic()
        fit = train_epoch(module, loaders[0], spec, stepper=stepper, device=device, epoch=epoch,
                          progress=progress)
        chosen = evaluate(module, loaders[1], spec, classes, device=device, dtype=dtype)
        if chosen["loss"] is None:
            raise ImageError("no image of the selection split could be decoded: see the "
                             "warnings above")
        history.append({"epoch": epoch, "train_loss": fit["loss"],
                        "train_accuracy": fit["accuracy"], "select_loss": chosen["loss"],
                        "select_accuracy": chosen["accuracy"],
                        "lr": optimizer.param_groups[0]["lr"],
                        "seconds": round(time.monotonic() - started, 3)})
        logger.info("epoch %s: train loss %.4f acc %.4f, selection loss %.4f acc %.4f", epoch,
                    fit["loss"], fit["accuracy"], chosen["loss"], chosen["accuracy"])
        if not best or _better(chosen, best):
            best = {**chosen, "epoch": epoch}
            best_state = {k: v.detach().to("cpu", copy=True)
                          for k, v in module.state_dict().items()}
        elif config.patience and epoch - best["epoch"] >= config.patience:
            logger.info("early stop: no better selection score since epoch %s", best["epoch"])
            break
    module.load_state_dict(best_state)
    return history, best


def _better(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Higher accuracy wins; at equal accuracy, lower loss."""
    return bool((new["accuracy"], -new["loss"]) > (old["accuracy"], -old["loss"]))
