"""The ONNX Runtime backend: the same predictor, another engine; the CPU default.

``RSTREAM_BACKEND=auto`` (the default) serves with ONNX Runtime on the CPU when it is
installed (it is part of the worker extra) and with eager PyTorch on CUDA, whose fp16
autocast is the fast path there; ``onnx`` and ``eager`` force one. The ONNX file of a model
version is exported once, by the first worker that needs it, and cached (worker/model/export.py);
the normalization, softmax, top-k and out-of-memory handling are the eager predictor's own.

``RSTREAM_PRECISION=int8`` serves the int8 model of the version instead (worker/model/quantize.py:
calibrated, cached, and refused below ``RSTREAM_INT8_MIN_AGREEMENT``). ``RSTREAM_FORWARD``
other than eager picks the compiled eager forward (worker/model/compiled.py).
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import Tensor

from rstream.shared.errors import ConfigError, ModelError
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.worker.model import quantize
from rstream.worker.model.compiled import CompiledPredictor
from rstream.worker.model.export import cached_onnx, onnx_bytes
from rstream.worker.model.loader import LoadedModel
from rstream.worker.model.predict import Predictor

logger = logging.getLogger(__name__)


class OnnxPredictor(Predictor):
    """A :class:`Predictor` whose logits come from an ONNX Runtime session."""

    def __init__(self, loaded: LoadedModel, device: torch.device, precision: str = "auto",
                 topk: int = 5, *, registry: Registry | None = None,
                 settings: Settings | None = None) -> None:
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
        self.int8: dict[str, object] | None = None  # the int8 record, when serving int8
        if precision == "int8":
            data = self._int8(loaded, data, registry, settings or Settings())
        try:
            self.session = onnxruntime.InferenceSession(data, options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # a damaged cached file: export again, in memory this time
            if self.int8 is not None:  # never fp32 in place of the int8 asked for
                raise ModelError(f"{self.model_id}: its cached int8 model does not load "
                                 f"({exc}): delete model-int8-*.onnx beside its weights and "
                                 "quantize again") from None
            logger.warning("%s: the cached ONNX file does not load (%s); exporting again",
                           self.model_id, exc)
            self.session = onnxruntime.InferenceSession(
                onnx_bytes(self.module, self.preprocessing.crop), options,
                providers=["CPUExecutionProvider"])
        logger.info("%s: ONNX Runtime session ready (%s, %.1f MB)", self.model_id,
                    self.precision, len(data) / 1e6)

    @property
    def precision(self) -> str:
        return "int8" if self.int8 is not None else "fp32"

    def _int8(self, loaded: LoadedModel, fp32: bytes, registry: Registry | None,
              settings: Settings) -> bytes:
        storage = registry.storage if registry is not None else Storage(settings)
        data, record = quantize.int8_model(loaded, fp32, registry=registry, storage=storage,
                                           source=settings.calibration,
                                           max_pixels=settings.max_image_pixels)
        quantize.check(record, settings.int8_min_agreement, loaded.model_id)
        logger.info("%s: int8 keeps fp32's top-1 class on %.1f%% of %s held-out images "
                    "(calibrated on %s)", loaded.model_id, 100 * record["top1_agreement"],
                    record["held_out"], record["calibration"]["source"])
        self.int8 = record
        return data

    def _logits(self, x: Tensor) -> Tensor:
        (logits,) = self.session.run(None, {"x": x.float().contiguous().numpy()})
        return torch.from_numpy(logits)


def resolve_backend(backend: str, device: torch.device, forward: str = "eager") -> str:
    """``eager`` or ``onnx`` for ``RSTREAM_BACKEND`` on ``device``; a compiled
    ``RSTREAM_FORWARD`` asks for the eager backend."""
    if backend != "auto":
        return backend
    if forward != "eager":
        return "eager"
    if device.type == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
        return "onnx"
    return "eager"


def make_predictor(backend: str, loaded: LoadedModel, device: torch.device, precision: str,
                   topk: int, *, registry: Registry | None = None,
                   settings: Settings | None = None) -> Predictor:
    """The predictor for ``RSTREAM_BACKEND``, ``RSTREAM_PRECISION`` and ``RSTREAM_FORWARD``
    (from ``settings``; without them, the eager forward)."""
    forward = settings.forward if settings is not None else "eager"
    chosen = resolve_backend(backend, device, forward)
    if precision == "int8" and (chosen != "onnx" or device.type != "cpu"):
        raise ConfigError(f"RSTREAM_PRECISION=int8 runs on ONNX Runtime on the CPU, not with "
                          f"the {chosen} backend on {device}: use RSTREAM_BACKEND=auto (or "
                          "onnx), RSTREAM_FORWARD=eager and a CPU device, or another precision")
    if chosen == "onnx":
        if forward != "eager":
            raise ConfigError(f"RSTREAM_FORWARD={forward} compiles the eager backend, not "
                              "ONNX Runtime: use RSTREAM_BACKEND=auto or eager with it")
        return OnnxPredictor(loaded, device, precision, topk, registry=registry,
                             settings=settings)
    if forward != "eager":
        assert settings is not None
        return CompiledPredictor(loaded, device, precision, topk, forward=forward,
                                 max_batch=settings.max_batch)
    return Predictor(loaded, device, precision, topk)
