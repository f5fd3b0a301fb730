"""Checkpoints from outside: a state_dict saved by a plain torchvision training script, checked
against an architecture and a label list, then published as a registry version.

Files: ``.safetensors``, or anything else (``.pt``, ``.pth``) read with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers and never runs
an object's code. The state_dict is the file's content, or its ``"model"``, ``"state_dict"``
or ``"model_state_dict"`` entry (torchvision's ``references/classification/train.py`` saves
``{"model": ..., "optimizer": ..., "args": Namespace(...)}``); a ``module.`` prefix
(DistributedDataParallel) is dropped. Every mismatch with the architecture and the labels is
one :class:`ModelError` line that names the fix.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from rstream.shared.errors import ConfigError, ModelError
from rstream.shared.models.refs import ARCHS
from rstream.shared.models.registry import Registry
from rstream.worker.model.loader import build, save_model
from rstream.worker.model.preprocess import Preprocessing

_WRAPPERS = ("model", "state_dict", "model_state_dict")
# Plain values that torchvision's reference training script pickles next to the weights.
_SAFE_GLOBALS: list[Any] = [argparse.Namespace]


def read_labels(path: Path) -> list[str]:
    """Class names in output order: a JSON list of strings, or one name per line of text."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"labels file {path}: cannot read it ({exc})") from None
    if path.suffix == ".json":
        try:
            labels = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"labels file {path}: not JSON ({exc})") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"labels file {path}: use a JSON list of strings")
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise ConfigError(f"labels file {path} lists no labels: one class name per line")
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ConfigError(f"labels file {path} lists {duplicates[0]!r} twice: each class once")
    return [str(x) for x in labels]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in ``path``, without running code from it; ModelError saying why not."""
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return dict(safetensors.torch.load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not plain weights, refused without unpickling it ({first}): "
                         "save model.state_dict() with torch.save, or as safetensors") from None
    return _unwrap(content, path)


def _unwrap(content: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(content, dict):
        for key in _WRAPPERS:
            if isinstance(content.get(key), dict):
                content = content[key]
                break
    if not isinstance(content, dict) or not content or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()):
        raise ModelError(f"{path}: holds no state_dict (a dict of tensors, alone or under "
                         f"{', '.join(repr(k) for k in _WRAPPERS)}): save model.state_dict()")
    if all(k.startswith("module.") for k in content):
        content = {k.removeprefix("module."): v for k, v in content.items()}
    return content


def fit(state: dict[str, torch.Tensor], arch: str, labels: list[str],
        source: str) -> dict[str, torch.Tensor]:
    """``state`` checked against ``arch`` with ``len(labels)`` outputs, as float32 tensors.

    BatchNorm's ``num_batches_tracked`` counters, which older checkpoints lack, are added.
    """
    if arch not in ARCHS:
        raise ConfigError(f"arch {arch!r} is unknown: use {' or '.join(ARCHS)}")
    expected = build(arch, len(labels)).state_dict()
    state = dict(state)
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    problem = _mismatch(state, expected, arch, len(labels))
    if problem:
        other = [a for a in ARCHS if a != arch and _fits_trunk(state, a)]
        hint = f"; it fits {other[0]}: use --arch {other[0]}" if other else ""
        raise ModelError(f"{source} does not fit {arch}: {problem}{hint}")
    classes = state["fc.weight"].shape[0]
    if classes != len(labels):
        raise ModelError(f"{source} has {classes} classes (fc.weight is "
                         f"{list(state['fc.weight'].shape)}) but the labels list "
                         f"{len(labels)}: give the labels the model was trained with")
    fitted = {k: v.to(expected[k].dtype).contiguous() for k, v in state.items()}
    if not all(bool(torch.isfinite(t).all()) for t in fitted.values() if t.is_floating_point()):
        raise ModelError(f"{source}: weights contain NaN or infinite values")
    return fitted


def _mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], arch: str,
              classes: int) -> str | None:
    """What keeps ``state`` from loading into ``arch`` (the fc's class count aside), or None."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        return f"{len(missing)} of its weights are missing (first: {missing[0]})"
    if unexpected:
        return f"{len(unexpected)} weights are not {arch}'s (first: {unexpected[0]})"
    for key, tensor in expected.items():
        shape = list(state[key].shape)
        wanted = list(tensor.shape)
        if key.startswith("fc.") and shape[1:] == wanted[1:]:
            continue  # the class count; checked against the labels by the caller
        if shape != wanted:
            return f"{key} is {shape}, {arch} with {classes} classes has {wanted}"
    return None


def _fits_trunk(state: dict[str, torch.Tensor], arch: str) -> bool:
    fc = state.get("fc.weight")
    classes = fc.shape[0] if fc is not None and fc.dim() == 2 else 1
    return _mismatch(state, build(arch, classes).state_dict(), arch, classes) is None


def import_checkpoint(registry: Registry, path: Path, *, name: str, arch: str,
                      labels_path: Path, preprocessing: Preprocessing,
                      promote: bool = False) -> str:
    """Publish the checkpoint at ``path`` as a new version of ``name``; returns the version."""
    labels = read_labels(labels_path)
    state = fit(read_state_dict(path), arch, labels, str(path))
    module = build(arch, len(labels))
    module.load_state_dict(state, strict=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    reason = f"imported from {path.name}"
    version = save_model(registry, name, module, arch=arch, classes=labels,
                         preprocessing=preprocessing,
                         extra={"imported": {"file": path.name, "sha256": digest,
                                             "labels": labels_path.name, "reason": reason}})
    if promote:
        registry.promote(name, version, reason)
    return version
