"""The optimizer and its learning-rate schedule, from the recipe of torchvision's references.

SGD with momentum over parameter groups that each keep their own learning rate; weight decay
on weights only (norm layers' scales and every bias get none, torchvision's
``norm_weight_decay=0``); per optimizer step, a linear warm-up from 1% of the rate, then a
cosine decay to zero by the last step (or a constant rate).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rstream.shared.training.config import TrainConfig


def make_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; each of ``groups`` is split in two: weights that decay, and the
    one-dimensional parameters (biases, norm scales) that do not."""
    split: list[dict[str, Any]] = []
    for group in groups:
        params = group["params"]
        decays = [p for p in params if p.ndim > 1]
        keeps = [p for p in params if p.ndim <= 1]
        split += [{**group, "params": decays, "weight_decay": config.weight_decay},
                  {**group, "params": keeps, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in split if g["params"]], lr=config.lr_fc,
                           momentum=config.momentum)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The rate of every group, per optimizer step: warm-up over ``warmup_epochs`` (at most
    half the run), then cosine to zero at the run's last step, or constant."""
    total = max(1, config.epochs * steps_per_epoch)
    warm = min(config.warmup_epochs * steps_per_epoch, total // 2)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: rate_factor(step, warm, total, config.schedule))


def rate_factor(step: int, warm: int, total: int, schedule: str) -> float:
    """The multiple of the set learning rate at optimizer step ``step`` (0-based)."""
    if step < warm:
        return 0.01 + 0.99 * step / warm
    if schedule == "constant":
        return 1.0
    done = min(1.0, (step - warm) / max(1, total - warm))
    return 0.5 * (1.0 + math.cos(math.pi * done))
