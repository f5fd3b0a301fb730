"""The training loop: freezing for the two modes, optimizer groups, epochs with AMP.

Plain functions on a module and a data loader; :mod:`worker.finetune.run` runs them for a model
in the registry and decides what to publish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from shared.errors import ConfigError, ImageError
from shared.finetune_config import TrainConfig
from worker.finetune.evaluation import autocast, batches, evaluate, training_dtype
from worker.preprocess import Preprocessing

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]  # (epoch, optimizer step, loss)


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
