"""The hyper-parameters of a fine-tuning run, checked without torch.

``rstream train --set KEY=VALUE`` is checked here on the submitting side, so a wrong key or
value is one clear error at once instead of a traceback in the trainer's log; the trainer
builds the same :class:`TrainConfig` from the same options.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rstream.shared.errors import ConfigError

MODES = ("feature-extract", "finetune", "full")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
SCHEDULES = ("cosine", "constant")
#: Options that settings and their own flags give (--mode, --epochs), not ``--set``.
GIVEN_ELSEWHERE = frozenset({"mode", "epochs", "device", "precision"})
#: Options that change how fast a run goes, never what it learns: left out of its fingerprint.
NOT_LEARNED = frozenset({"workers"})
#: Named option sets for ``rstream train --preset NAME``; ``--mode``, ``--epochs`` and ``--set``
#: override theirs. ``digits``: small glyphs (32x32 digits, letters) from a random init, every
#: layer trained; no flips, which change a glyph's meaning (bench/train_digits.py measures it).
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"mode": "full", "epochs": 15, "resize": 32, "crop": 32, "flip": 0.0,
               "lr_fc": 0.1, "batch_size": 64, "weight_decay": 5e-4},
}


# The largest values a run may ask for: a batch that fits one GPU, images a model can take,
# runs that end (a caller of the HTTP API must not ask for a billion of anything).
UPPER_BOUNDS = {"epochs": 1000, "batch_size": 4096, "accumulation": 1024, "resize": 4096,
                "crop": 4096}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one fine-tuning run; recorded in the published meta.

    Modes: ``feature-extract`` trains a new ``fc``; ``finetune`` trains ``layer4`` (and the
    blocks in ``unfreeze``) at ``lr_layer4`` and ``fc`` at ``lr_fc``; ``full`` trains every
    layer at ``lr_fc``, for a start without pretrained weights (a random init).
    """

    mode: str = "finetune"
    epochs: int = 10
    batch_size: int = 32
    accumulation: int = 1  # micro-batches per optimizer step
    lr_fc: float = 1e-2
    lr_layer4: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4  # on weights only: norms and biases get none
    schedule: str = "cosine"  # the learning rate per step, after the warm-up; or constant
    warmup_epochs: int = 1  # linear warm-up from 1% of the rate; at most half the run
    label_smoothing: float = 0.1
    max_grad_norm: float = 5.0  # 0: no clipping
    patience: int = 3  # epochs without a better selection score before stopping; 0: never
    val_percent: int = 10  # the gate's split: production and candidate are scored on it
    select_percent: int = 10  # picks the best epoch and stops early; the gate never sees it
    seed: int = 0
    resize: int | None = None  # None: the start model's preprocessing
    crop: int | None = None
    # RandomResizedCrop: area fraction (None: from 0.08, raised for small images so that a crop
    # keeps 112x112 pixels: rstream.worker.finetune.dataset.scale_floor, to 1) and aspect ratio
    # range; then horizontal flips
    crop_scale: tuple[float, ...] | None = None
    crop_ratio: tuple[float, ...] = (3 / 4, 4 / 3)
    flip: float = 0.5  # probability of a horizontal flip; 0 for data that flips meaning
    device: str = "auto"
    precision: str = "auto"  # auto: fp16 autocast on CUDA; always fp32 on the CPU
    workers: int = 0  # DataLoader worker processes that fetch and decode
    unfreeze: tuple[str, ...] = ()  # finetune mode: more blocks (e.g. layer3) at lr_layer4

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _typed(f, getattr(self, f.name)))
        if self.mode not in MODES:
            raise ConfigError(f"training mode {self.mode!r} is unknown: use {', '.join(MODES)}")
        if self.unfreeze and self.mode != "finetune":
            raise ConfigError("unfreeze only applies to mode finetune: drop it or change the mode")
        for name, most in UPPER_BOUNDS.items():
            value = getattr(self, name)
            if value is not None and not 1 <= value <= most:
                raise ConfigError(f"{name}={value} is out of range: use 1 to {most}")
        if not 0 < self.val_percent < 100 or not 0 < self.select_percent < 100 \
                or self.val_percent + self.select_percent >= 100:
            raise ConfigError(f"val_percent={self.val_percent} and select_percent="
                              f"{self.select_percent} must each be 1 or more and leave images "
                              "to train on (their sum below 100)")
        for name, value in (("precision", self.precision), ("schedule", self.schedule)):
            allowed = PRECISIONS if name == "precision" else SCHEDULES
            if value not in allowed:
                raise ConfigError(f"{name} {value!r} is unknown: use {', '.join(allowed)}")
        if min(self.lr_fc, self.lr_layer4, self.momentum, self.weight_decay,
               self.max_grad_norm, self.patience, self.workers, self.warmup_epochs) < 0:
            raise ConfigError("learning rates, momentum, weight_decay, max_grad_norm, patience, "
                              "warmup_epochs and workers must not be negative")
        if self.workers > 64 or max(self.patience, self.warmup_epochs) > 1000 or \
                max(self.lr_fc, self.lr_layer4, self.weight_decay) > 10 or self.momentum >= 1:
            raise ConfigError("workers is at most 64, patience and warmup_epochs at most 1000, "
                              "learning rates and weight_decay at most 10, momentum below 1")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.flip <= 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing} must lie in [0, 1) and "
                              f"flip={self.flip} in [0, 1]")
        _check_range("crop_scale", self.crop_scale, 0.0, 1.0)
        _check_range("crop_ratio", self.crop_ratio, 0.0, float("inf"))

    def fingerprint_fields(self) -> dict[str, Any]:
        """What the run learns from, besides its data: every option but :data:`NOT_LEARNED`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_LEARNED}


def _check_range(name: str, value: tuple[float, ...] | None, low: float, high: float) -> None:
    if value is None:
        return
    if len(value) != 2 or not low < value[0] <= value[1] <= high:
        raise ConfigError(f"{name}={','.join(str(v) for v in value)} is invalid: use two numbers "
                          f"LOW,HIGH with {low:g} < LOW <= HIGH" + (f" <= {high:g}"
                                                                  if high < float("inf") else ""))


def preset(name: str) -> dict[str, Any]:
    """The options of preset ``name`` (``mode`` and ``epochs`` included); ConfigError if none."""
    if name not in PRESETS:
        raise ConfigError(f"training preset {name!r} is unknown: use {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def check_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` (``--set`` options) when each names a known option with a valid value;
    ConfigError naming the option and the fix otherwise."""
    known = sorted(f.name for f in dataclasses.fields(TrainConfig)
                   if f.name not in GIVEN_ELSEWHERE)
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(f"training option {unknown[0]!r} is unknown: use one of "
                          f"{', '.join(known)} (mode and epochs have their own flags)")
    TrainConfig(**overrides)  # each value, and the options together
    return dict(overrides)


def _typed(f: dataclasses.Field[Any], value: Any) -> Any:
    """``value`` as field ``f``'s type, or ConfigError naming the option."""
    kind = str(f.type)
    if value is None and "None" in kind:
        return None
    if kind.startswith("tuple[str"):
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
    elif kind.startswith("tuple[float"):
        numbers = _numbers(value)
        if numbers is not None:
            return numbers
    elif kind.startswith("int") and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind.startswith("float") and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        return float(value)
    elif kind == "str" and isinstance(value, str):
        return value
    wanted = next(text for prefix, text in (
        ("int", "an integer"), ("float", "a number"), ("str", "a word"),
        ("tuple[str", "names separated by commas"),
        ("tuple[float", "two numbers separated by a comma (e.g. 0.25,1)"),
    ) if kind.startswith(prefix))
    raise ConfigError(f"training option {f.name}={value!r} is invalid: use {wanted}"
                      + (" or null" if "None" in kind else ""))


def _numbers(value: Any) -> tuple[float, ...] | None:
    """``value`` (a list, a tuple, or text like ``0.25,1``) as floats, or None."""
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)):
        return None
    try:
        return tuple(float(v) for v in parts if not isinstance(v, bool))
    except (TypeError, ValueError):
        return None
