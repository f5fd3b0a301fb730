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

from shared.errors import ConfigError

MODES = ("feature-extract", "finetune")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: Options that settings and their own flags give (--mode, --epochs), not ``--set``.
GIVEN_ELSEWHERE = frozenset({"mode", "epochs", "device", "precision"})


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
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _typed(f, getattr(self, f.name)))
        if self.mode not in MODES:
            raise ConfigError(f"training mode {self.mode!r} is unknown: use {' or '.join(MODES)}")
        if self.unfreeze and self.mode != "finetune":
            raise ConfigError("unfreeze only applies to mode finetune: drop it or change the mode")
        if min(self.epochs, self.batch_size, self.accumulation) < 1:
            raise ConfigError("epochs, batch_size and accumulation must be at least 1")
        if not 0 < self.val_percent < 100:
            raise ConfigError(f"val_percent={self.val_percent} must lie between 1 and 99")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is unknown: use "
                              f"{', '.join(PRECISIONS)}")
        if min(self.lr_fc, self.lr_layer4, self.momentum, self.weight_decay,
               self.max_grad_norm, self.patience, self.workers) < 0:
            raise ConfigError("learning rates, momentum, weight_decay, max_grad_norm, patience "
                              "and workers must not be negative")


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
    if kind.startswith("tuple"):
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
    elif kind.startswith("int") and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind.startswith("float") and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        return float(value)
    elif kind == "str" and isinstance(value, str):
        return value
    base = kind.split(" ", maxsplit=1)[0].split("[", maxsplit=1)[0]
    wanted = {"int": "an integer", "float": "a number", "str": "a word",
              "tuple": "names separated by commas"}[base]
    raise ConfigError(f"training option {f.name}={value!r} is invalid: use {wanted}"
                      + (" or null" if "None" in kind else ""))
