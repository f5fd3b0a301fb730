"""Batched prediction: uint8 image batches in, top-k classes out, for one model version.

A :class:`Predictor` holds one loaded model on one device. It normalizes on the device (so only
uint8 pixels cross the bus, from pinned memory with non-blocking copies on CUDA), runs under
``torch.inference_mode()`` in channels_last with the configured autocast, and takes the softmax in
fp32. A CUDA out-of-memory error splits the batch in halves, recursively, and the size that fit
becomes this predictor's cap for every later batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rstream.shared.errors import ConfigError, ImageError, ModelError
from rstream.worker.model.batch_decode import Raw, Staging, preprocess_batch
from rstream.worker.model.loader import LoadedModel
from rstream.worker.model.preprocess import normalize

logger = logging.getLogger(__name__)

Top = list[dict[str, Any]]  # [{"index": 3, "label": "cat", "prob": 0.91}, ...], best first

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``RSTREAM_PRECISION`` on ``device``; None means plain fp32.

    ``auto`` is fp16 on CUDA and fp32 on the CPU, where bf16 autocast measured about 6x slower
    than fp32 on CPUs without AVX-512 BF16 (it is still allowed when asked for).
    """
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    if precision in _AUTOCAST_DTYPES:
        return _AUTOCAST_DTYPES[precision]
    if precision == "int8":
        raise ConfigError("RSTREAM_PRECISION=int8 runs on ONNX Runtime on the CPU, not on the "
                          "eager backend: use RSTREAM_BACKEND=auto (or onnx) on the CPU")
    raise ConfigError(f"RSTREAM_PRECISION={precision!r} is invalid: use auto, fp32, fp16 or bf16")


class Predictor:
    """One model version on one device, ready for batches of uint8 images."""

    def __init__(self, loaded: LoadedModel, device: torch.device, precision: str = "auto",
                 topk: int = 5) -> None:
        self.model_id = loaded.model_id
        self.classes = list(loaded.classes)
        self.preprocessing = loaded.preprocessing
        self.device = device
        self.topk = min(topk, len(self.classes))
        self.dtype = autocast_dtype(precision, device)
        self.module = loaded.module.to(device).to(memory_format=torch.channels_last).eval()
        self.cap: int | None = None  # most images per forward, lowered by out-of-memory errors
        self._cap_lock = threading.Lock()
        self._staging = Staging(device)
        self._decode_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __repr__(self) -> str:
        return f"Predictor({self.model_id!r}, {self.device}, {self.dtype or 'fp32'})"

    @property
    def precision(self) -> str:
        """fp16, bf16 (autocast) or fp32, as RSTREAM_PRECISION names them."""
        names = {dtype: name for name, dtype in _AUTOCAST_DTYPES.items()}
        return names.get(self.dtype, "fp32") if self.dtype is not None else "fp32"

    def collate(self, images: Sequence[Tensor]) -> Tensor:
        """Stack ``[3, H, W]`` images into one batch, in pinned memory when serving CUDA."""
        first = images[0]
        out = torch.empty((len(images), *first.shape), dtype=first.dtype,
                          pin_memory=self.device.type == "cuda")
        return torch.stack(list(images), out=out)

    def predict(self, images: Tensor) -> list[Top]:
        """Top-k classes for each image of a uint8 ``[N, 3, H, W]`` batch, in input order."""
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 [N, 3, H, W] batch, got {images.dtype} "
                             f"{list(images.shape)}")
        return self._predict_all(images)

    def predict_items(self, items: Sequence[Tensor | Raw]) -> list[Top | ImageError]:
        """Top-k classes for each item, in input order: uint8 ``[3, H, W]`` crops decoded on
        the CPU and :class:`Raw` JPEGs, decoded here on the device in one batch
        (worker/model/batch_decode.py); an image no decoder takes gets its ImageError.
        :meth:`prepare_items` then :meth:`predict_prepared`, which the batcher runs on two
        threads so that one batch decodes while the previous one is in the forward."""
        return self.predict_prepared(*self.prepare_items(items))

    def prepare_items(self, items: Sequence[Tensor | Raw],
                      ) -> tuple[Tensor | None, list[ImageError | None]]:
        """The model's normalized input on the device for ``items``, and each item's error."""
        dtype = self.dtype if self.dtype is not None and self.device.type == "cuda" \
            else torch.float32
        with torch.inference_mode():
            return preprocess_batch(items, self.preprocessing, self.device, dtype=dtype,
                                    staging=self._staging, stream=self._decode_stream)

    def predict_prepared(self, batch: Tensor | None, errors: list[ImageError | None],
                         ) -> list[Top | ImageError]:
        """What :meth:`prepare_items` made, scored: one entry per item it was given."""
        tops = iter(self._predict_all(batch) if batch is not None else [])
        return [error if error is not None else next(tops) for error in errors]

    def _predict_all(self, images: Tensor) -> list[Top]:
        total = images.shape[0]
        cap_before = self.cap
        tops: list[Top] = []
        while len(tops) < total:
            step = self.cap or total
            tops.extend(self._predict_split(images[len(tops):len(tops) + step]))
        if self.cap != cap_before:
            logger.warning("%s: out of memory on %s with a batch of %d images; batches are "
                           "capped at %d images from now on", self.model_id, self.device,
                           min(total, cap_before or total), self.cap)
        if len(tops) != total:
            raise ModelError(f"{self.model_id}: {len(tops)} results for {total} images")
        return tops

    def _predict_split(self, images: Tensor) -> list[Top]:
        try:
            return self._forward(images)
        except torch.cuda.OutOfMemoryError:
            if len(images) == 1:
                raise
        # Out of the except block, so the error's traceback no longer pins the failed tensors.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half = (len(images) + 1) // 2
        with self._cap_lock:
            self.cap = min(self.cap or half, half)
        return self._predict_split(images[:half]) + self._predict_split(images[half:])

    def _forward(self, images: Tensor) -> list[Top]:
        with torch.inference_mode():
            if images.dtype == torch.uint8:
                # From pinned memory the copy is asynchronous; the .cpu() below waits for it.
                x = images.to(self.device, non_blocking=True)
                x = normalize(x, self.preprocessing).contiguous(memory_format=torch.channels_last)
            else:  # normalized on the device already (predict_items)
                x = images
            logits = self._logits(x)
            if logits.ndim != 2 or logits.shape[0] != len(images):
                raise ModelError(f"{self.model_id}: output of shape {list(logits.shape)} for "
                                 f"{len(images)} images; expected [{len(images)}, classes]")
            probs = torch.softmax(logits.float(), dim=1)
            values, indices = probs.topk(self.topk, dim=1)
            rows = zip(indices.cpu().tolist(), values.cpu().tolist(), strict=True)
        return [self._top(idx, val) for idx, val in rows]

    def _logits(self, x: Tensor) -> Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits: Tensor = self.module(x)
        return logits

    def _top(self, indices: list[int], probs: list[float]) -> Top:
        return [{"index": i, "label": self.classes[i], "prob": p}
                for i, p in zip(indices, probs, strict=True)]
