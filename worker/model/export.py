"""Exporting models: ONNX (with torch's current exporter, ``dynamo=True`` via onnxscript) and
TorchScript, with a dynamic batch dimension.

Exporting a resnet takes seconds to tens of seconds, so a worker exports a model version once
and keeps the file (:class:`~rstream.worker.model.model_files.ModelFiles`: beside the version's
weights, or in the local cache folder); later workers load the file instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch
from torch import nn

from rstream.shared.models.registry import Registry
from rstream.worker.model.loader import LoadedModel
from rstream.worker.model.model_files import ModelFiles

logger = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"


def onnx_bytes(module: nn.Module, crop: int) -> bytes:
    """``module`` (eval mode, on the CPU) as ONNX bytes: input ``x`` [N, 3, crop, crop] float,
    output ``logits`` [N, classes], N dynamic."""
    sample = torch.zeros(1, 3, crop, crop)
    batch = torch.export.Dim("batch", min=1, max=65536)
    # The exporter reports its progress on stdout; the worker's logs say what matters.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.to(memory_format=torch.contiguous_format).eval(),
                                    (sample,), dynamo=True, verbose=False, input_names=["x"],
                                    output_names=["logits"], dynamic_shapes={"x": {0: batch}})
        assert program is not None
        buffer = io.BytesIO()
        program.save(buffer)  # type: ignore[arg-type]  # a file object works; stubs say a path
    return buffer.getvalue()


def torchscript_bytes(module: nn.Module, crop: int) -> bytes:
    """``module`` traced to TorchScript (``torch.jit.load`` reads it back)."""
    sample = torch.zeros(1, 3, crop, crop)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module.to(memory_format=torch.contiguous_format).eval(), sample)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def export(loaded: LoadedModel, fmt: str) -> bytes:
    """``loaded`` in format ``fmt`` (onnx or torchscript)."""
    if fmt == "onnx":
        return onnx_bytes(loaded.module, loaded.preprocessing.crop)
    return torchscript_bytes(loaded.module, loaded.preprocessing.crop)


def cached_onnx(loaded: LoadedModel, registry: Registry | None) -> bytes:
    """The ONNX bytes of ``loaded``: the kept file when a worker exported it before, else
    exported now and kept for the next ones (worker/model/model_files.py)."""
    files = ModelFiles(loaded, registry)
    data = files.read(ONNX_NAME)
    if data is None:
        data = onnx_bytes(loaded.module, loaded.preprocessing.crop)
        files.keep(ONNX_NAME, data)
    return data
