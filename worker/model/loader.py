"""Loading and saving models. Loading never executes code from a file.

References (``NAME``, ``NAME@VERSION``, ``torchvision:ARCH:WEIGHTS``, ``random:ARCH``) are parsed by
:mod:`rstream.shared.models.refs`; this module turns a parsed one into a module on the CPU.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import safetensors.torch
import torch
import torchvision
from torch import nn

from rstream.shared.errors import ModelError, NotFoundError
from rstream.shared.models import refs
from rstream.shared.models.refs import ARCHS, ModelRef
from rstream.shared.models.registry import Registry, new_version
from rstream.worker.model.preprocess import Preprocessing


@dataclass
class LoadedModel:
    """A model ready for inference, on the CPU, in eval mode, and what it is."""

    module: nn.Module
    model_id: str  # what result lines name: "NAME@VERSION", "random:resnet18:classes=…", …
    classes: list[str]
    preprocessing: Preprocessing
    arch: str
    meta: dict[str, Any] = field(default_factory=dict)


def build(arch: str, num_classes: int) -> nn.Module:
    """An untrained torchvision ResNet with ``num_classes`` outputs."""
    module: nn.Module = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    return module


def load_model(ref: str | ModelRef, registry: Registry | None = None) -> LoadedModel:
    """Resolve ``ref`` and load it on the CPU in eval mode."""
    parsed = refs.parse(ref) if isinstance(ref, str) else ref
    if parsed.kind == "random":
        loaded = _load_random(parsed)
    elif parsed.kind == "torchvision":
        loaded = _load_torchvision(parsed)
    else:
        if registry is None:
            raise ModelError(f"model {parsed.name!r} needs the registry (RSTREAM_MODELS)")
        version = parsed.version or registry.production(parsed.name)
        loaded = load_version(registry, parsed.name, version)
    loaded.module.eval()
    return loaded


def _load_random(ref: ModelRef) -> LoadedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ref.seed)
        module = build(ref.arch, ref.classes)
    return LoadedModel(
        module=module,
        model_id=str(ref),
        classes=[f"class_{i}" for i in range(ref.classes)],
        preprocessing=Preprocessing(),
        arch=ref.arch,
    )


def _load_torchvision(ref: ModelRef) -> LoadedModel:
    try:
        weights = torchvision.models.get_model_weights(ref.arch)[ref.weights]
    except KeyError:
        raise ModelError(f"torchvision has no weights {ref.weights!r} for {ref.arch}") from None
    filename = os.path.basename(weights.url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if not os.path.isfile(path):
        raise ModelError(
            f"torchvision:{ref.arch}:{weights.name} needs the file {filename} in "
            f"{os.path.dirname(path)} (rstream never downloads weights): fetch it from "
            f"{weights.url} on a machine with internet and copy it there, or set TORCH_HOME "
            "to a directory whose checkpoints/ holds it")
    try:  # weights_only: tensors and plain containers, never an arbitrary object's code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not plain weights, refused without unpickling it ({first}): "
                         "replace the file with torchvision's own") from None
    module = build(ref.arch, len(weights.meta["categories"]))
    module.load_state_dict(state)
    transform = weights.transforms()
    preprocessing = Preprocessing(
        resize=int(transform.resize_size[0]), crop=int(transform.crop_size[0]),
        mean=tuple(transform.mean), std=tuple(transform.std),
        interpolation=transform.interpolation.value)
    return LoadedModel(module, f"torchvision:{ref.arch}:{weights.name}",
                       list(weights.meta["categories"]), preprocessing, ref.arch)


def load_version(registry: Registry, name: str, version: str) -> LoadedModel:
    """A registry version, checked: known arch, class count, finite weights."""
    meta = registry.read_meta(name, version)
    label = f"{name}@{version}"
    arch, classes = meta.get("arch"), meta.get("classes")
    if arch not in ARCHS or not isinstance(classes, list) or not classes:
        raise ModelError(f"{label}: meta.json names no known arch and class list")
    try:  # a storage error other than a missing file (throttling, a timeout) stays as it is
        blob = registry.storage.read(registry.weights_uri(name, version))
    except NotFoundError:
        raise ModelError(f"{label}: weights.safetensors is missing") from None
    try:
        state = safetensors.torch.load(blob)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ModelError(f"{label}: weights.safetensors is unreadable ({exc})") from None
    module = build(arch, len(classes))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{label}: weights do not fit {arch} with {len(classes)} classes "
                         f"({str(exc).splitlines()[0]})") from None
    if not all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
        raise ModelError(f"{label}: weights contain NaN or infinite values")
    try:
        preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{label}: meta.json has no valid preprocessing ({exc!r})") from None
    return LoadedModel(module, label, [str(c) for c in classes], preprocessing, arch, meta)


def save_model(registry: Registry, name: str, module: nn.Module, *, arch: str,
               classes: list[str], preprocessing: Preprocessing,
               extra: dict[str, Any] | None = None, version: str | None = None) -> str:
    """Publish ``module`` as a new version of ``name``; the weights first, meta.json last."""
    version = version or new_version()
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    registry.storage.write(registry.weights_uri(name, version), safetensors.torch.save(state))
    meta = {
        "name": name,
        "version": version,
        "arch": arch,
        "classes": list(classes),
        "preprocessing": preprocessing.to_dict(),
        "created_at": datetime.now(UTC).isoformat(),
        **(extra or {}),
    }
    registry.storage.write(registry.meta_uri(name, version),
                           json.dumps(meta, indent=2).encode())
    return version
