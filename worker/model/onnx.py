"""The ONNX Runtime backend: the same predictor, another engine; the CPU default.

``RSTREAM_BACKEND=auto`` (the default) serves with ONNX Runtime on the CPU when it is
installed (it is part of the worker extra) and with eager PyTorch on CUDA, whose fp16
autocast is the fast path there; ``onnx`` and ``eager`` force one. The ONNX file of a model
version is exported once, by the first worker that needs it, and cached (worker/model/export.py);
the normalization, softmax, top-k and out-of-memory handling are the eager predictor's own.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import Tensor

from rstream.shared.errors import ConfigError
from rstream.shared.models.registry import Registry
from rstream.worker.model.export import cached_onnx, onnx_bytes
from rstream.worker.model.loader import LoadedModel
from rstream.worker.model.predict import Predictor

logger = logging.getLogger(__name__)


class OnnxPredictor(Predictor):
    """A :class:`Predictor` whose logits come from an ONNX Runtime session."""

    def __init__(self, loaded: LoadedModel, device: torch.device, precision: str = "auto",
                 topk: int = 5, *, registry: Registry | None = None) -> None:
        if device.type != "cpu":
            raise ConfigError(f"RSTREAM_BACKEND=onnx runs on the CPU only, not {device}: use "
                              "RSTREAM_BACKEND=eager on CUDA (auto picks it there)")
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("RSTREAM_BACKEND=onnx needs ONNX Runtime: install the worker "
                              "extra (pip install 'rstream[worker]'), or use "
                              "RSTREAM_BACKEND=eager") from None
        super().__init__(loaded, device, "fp32", topk)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        data = cached_onnx(loaded, registry)
        try:
            self.session = onnxruntime.InferenceSession(data, options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # a damaged cached file: export again, in memory this time
            logger.warning("%s: the cached ONNX file does not load (%s); exporting again",
                           self.model_id, exc)
            self.session = onnxruntime.InferenceSession(
                onnx_bytes(self.module, self.preprocessing.crop), options,
                providers=["CPUExecutionProvider"])
        logger.info("%s: ONNX Runtime session ready (%.1f MB)", self.model_id, len(data) / 1e6)

    def _logits(self, x: Tensor) -> Tensor:
        (logits,) = self.session.run(None, {"x": x.float().contiguous().numpy()})
        return torch.from_numpy(logits)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``eager`` or ``onnx`` for ``RSTREAM_BACKEND`` on ``device``."""
    if backend != "auto":
        return backend
    if device.type == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
        return "onnx"
    return "eager"


def make_predictor(backend: str, loaded: LoadedModel, device: torch.device, precision: str,
                   topk: int, *, registry: Registry | None = None) -> Predictor:
    """The predictor for ``RSTREAM_BACKEND``."""
    if resolve_backend(backend, device) == "onnx":
        return OnnxPredictor(loaded, device, precision, topk, registry=registry)
    return Predictor(loaded, device, precision, topk)
