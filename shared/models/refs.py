"""Model references: the one grammar of ``--model``, ``RSTREAM_MODEL`` and task messages.

- ``NAME`` (the production version) or ``NAME@VERSION``: a model in the registry;
- ``torchvision:ARCH[:WEIGHTS]``: torchvision's weights from the local torch hub cache;
- ``random:ARCH[:classes=N][:seed=S]``: a seeded random initialization.

Parsed here, once, without torch: the settings, ``rstream submit``, the worker's engine and
the model loader all call :func:`parse`, so a reference the worker would refuse is refused at
submit, with the same reason. Whether a registry name exists, or a torchvision file is cached,
is for the registry and the worker to say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rstream.shared.errors import ConfigError, ModelError
from rstream.shared.names import MODEL_NAME

#: The architectures rstream builds (torchvision ResNets).
ARCHS = ("resnet18", "resnet50")

#: torchvision's weights enums per architecture (a unit test on the worker side compares this
#: with ``torchvision.models.get_model_weights``); ``DEFAULT`` is the best of them.
TORCHVISION_WEIGHTS = {
    "resnet18": ("IMAGENET1K_V1",),
    "resnet50": ("IMAGENET1K_V1", "IMAGENET1K_V2"),
}

#: A registry version id, which sorts by creation time: ``20261127T195512123456Z-3f2a``.
VERSION_PATTERN = r"\d{8}T\d{6}\d{6}Z-[0-9a-f]{4}"

VERSION_RE = re.compile(VERSION_PATTERN)
MAX_CLASSES = 100_000
_FORMS = "NAME, NAME@VERSION, torchvision:ARCH:WEIGHTS or random:ARCH[:classes=N][:seed=S]"


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference; :func:`parse` builds it, ``str()`` gives its canonical text."""

    kind: str  # "registry" | "torchvision" | "random"
    arch: str = ""
    name: str = ""
    version: str = ""  # registry: empty means the production pointer
    weights: str = ""  # torchvision: e.g. IMAGENET1K_V2 or DEFAULT
    classes: int = 1000
    seed: int = 0

    def __str__(self) -> str:
        if self.kind == "registry":
            return f"{self.name}@{self.version}" if self.version else self.name
        if self.kind == "torchvision":
            return f"torchvision:{self.arch}:{self.weights}"
        return f"random:{self.arch}:classes={self.classes}:seed={self.seed}"

    @property
    def follows_production(self) -> bool:
        """A bare registry NAME: the version to use is whatever production points at."""
        return self.kind == "registry" and not self.version


def parse(text: str) -> ModelRef:
    """The reference ``text``, checked; ModelError with the reason when it is not one."""
    text = text.strip()
    if not text:
        raise ModelError("no model given: pass --model or set RSTREAM_MODEL "
                         "(e.g. random:resnet18, NAME or NAME@VERSION)")
    if any(c.isspace() for c in text):
        raise ModelError(f"model reference {text!r} contains whitespace: use {_FORMS}")
    head, _, rest = text.partition(":")
    if head == "random":
        return _parse_random(text, rest)
    if head == "torchvision":
        return _parse_torchvision(text, rest)
    if ":" in text:
        raise ModelError(f"model reference {text!r} is not understood: use {_FORMS}")
    if text in ARCHS:
        raise ModelError(
            f"model reference {text!r} names an architecture, not a model: use "
            f"torchvision:{text}:{TORCHVISION_WEIGHTS[text][-1]} for torchvision's ImageNet "
            f"weights, random:{text} for a random init, or the name of a registry model")
    name, at, version = text.partition("@")
    try:
        MODEL_NAME.check(name)
    except ConfigError as exc:
        raise ModelError(f"model reference {text!r}: {exc}") from None
    if at and not VERSION_RE.fullmatch(version):
        raise ModelError(f"model reference {text!r}: version {version!r} is not a version id "
                         f"(like 20261127T195512123456Z-3f2a): list them with "
                         f"`rstream models ls {name}`")
    return ModelRef("registry", name=name, version=version)


def _check_arch(arch: str, text: str) -> str:
    if arch not in ARCHS:
        raise ModelError(f"model reference {text!r}: architecture {arch!r} is not one of "
                         f"{', '.join(ARCHS)}")
    return arch


def _parse_torchvision(text: str, rest: str) -> ModelRef:
    arch, _, weights = rest.partition(":")
    _check_arch(arch, text)
    weights = weights or "DEFAULT"
    known = TORCHVISION_WEIGHTS[arch]
    if weights != "DEFAULT" and weights not in known:
        raise ModelError(f"model reference {text!r}: torchvision has no weights {weights!r} for "
                         f"{arch}: use one of {', '.join((*known, 'DEFAULT'))}")
    return ModelRef("torchvision", arch=arch, weights=weights)


def _parse_random(text: str, rest: str) -> ModelRef:
    arch, *options = rest.split(":")
    _check_arch(arch, text)
    values = {"classes": 1000, "seed": 0}
    seen: set[str] = set()
    for option in options:
        key, _, raw = option.partition("=")
        if key not in values or not re.fullmatch(r"[0-9]{1,9}", raw) or key in seen:
            raise ModelError(f"model reference {text!r}: option {option!r} is not classes=N or "
                             "seed=S (each at most once)")
        seen.add(key)
        values[key] = int(raw)
    if not 1 <= values["classes"] <= MAX_CLASSES:
        raise ModelError(
            f"model reference {text!r}: classes must be at least 1 and at most {MAX_CLASSES}")
    return ModelRef("random", arch=arch, classes=values["classes"], seed=values["seed"])
