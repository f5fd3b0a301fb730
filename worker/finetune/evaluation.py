"""Evaluation with the serving preprocessing: accuracy, loss, per-class counts and the
confusion matrix.

Training validates every epoch with it, and the promotion gate scores the candidate and the
production model with it on the same validation split.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rstream.worker.model.predict import autocast_dtype
from rstream.worker.model.preprocess import Preprocessing, normalize


def training_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Serving's autocast dtype on CUDA (auto: fp16); None, plain fp32, on the CPU."""
    return autocast_dtype(precision, device) if device.type == "cuda" else None


def autocast(device: torch.device, dtype: torch.dtype | None
             ) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``dtype`` on ``device``; nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def batches(loader: Iterable[tuple[torch.Tensor, torch.Tensor]], spec: Preprocessing,
            device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized images and labels on ``device``, fed the way serving feeds the model."""
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    for pixels, labels in loader:
        if len(labels):
            on_device = pixels.to(device, non_blocking=True).contiguous(memory_format=layout)
            yield normalize(on_device, spec), labels.to(device, non_blocking=True)


def evaluate(module: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
             spec: Preprocessing,
             classes: Sequence[str], *, device: torch.device, dtype: torch.dtype | None
             ) -> dict[str, Any]:
    """Accuracy, mean loss, per-class counts and the confusion matrix (``confusion[t][p]``:
    images of class ``t`` predicted ``p``); labels the model lacks (-1) count as wrong and stay
    out of the matrix."""
    module.eval()
    counts = torch.zeros(len(classes), dtype=torch.long)
    correct = torch.zeros(len(classes), dtype=torch.long)
    confusion = torch.zeros(len(classes) * len(classes), dtype=torch.long)
    loss_sum, seen, unknown = 0.0, 0, 0
    with torch.inference_mode():
        for images, labels in batches(loader, spec, device):
            with autocast(device, dtype):
                logits = module(images)
            known = labels >= 0
            if known.any():
                loss_sum += F.cross_entropy(logits[known].float(), labels[known],
                                            reduction="sum").item()
            predicted = logits.argmax(1)
            hits = (predicted == labels) & known
            # row: the true class, column: the predicted one (flattened for one bincount)
            pairs = (labels[known] * len(classes) + predicted[known]).cpu()
            confusion += torch.bincount(pairs, minlength=len(classes) ** 2)
            counts += torch.bincount(labels[known].cpu(), minlength=len(classes))
            correct += torch.bincount(labels[hits].cpu(), minlength=len(classes))
            seen += len(labels)
            unknown += int((~known).sum())
    return {
        "accuracy": int(correct.sum()) / seen if seen else 0.0,
        "loss": loss_sum / (seen - unknown) if seen > unknown else None,
        "images": seen,
        "unknown_labels": unknown,
        "per_class": {name: {"count": int(n), "correct": int(c)}
                      for name, n, c in zip(classes, counts, correct, strict=True)},
        "confusion": confusion.view(len(classes), len(classes)).tolist(),
    }

