"""Which device a serving process runs on: ``RSTREAM_DEVICE`` resolved to a ``torch.device``.

Call :func:`resolve_device` only inside the process that serves (the CLI's ``score``, a worker
child after the fork), never at import time and never in a parent that forks later: even
``torch.cuda.is_available()`` initializes CUDA, and a CUDA context does not survive a fork.
"""

from __future__ import annotations

import torch

from rstream.shared.errors import ConfigError


def resolve_device(setting: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a device; ConfigError when CUDA is absent."""
    value = setting.strip().lower()
    if value == "cpu":
        return torch.device("cpu")
    if value == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if value != "cuda" and not (value.startswith("cuda:") and value[5:].isdigit()):
        raise ConfigError(f"RSTREAM_DEVICE={setting!r} is invalid: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"RSTREAM_DEVICE={setting} but this process sees no CUDA device (torch "
            f"{torch.__version__}, CUDA {torch.version.cuda or 'not built in'}): set "
            "RSTREAM_DEVICE=cpu or auto, or check CUDA_VISIBLE_DEVICES and the driver")
    device = torch.device(value)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"RSTREAM_DEVICE={setting} but this process sees {count} CUDA device(s) "
            f"(cuda:0..cuda:{count - 1}): pick one of those, or check CUDA_VISIBLE_DEVICES")
    return device
