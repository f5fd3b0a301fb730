"""Exporting models: ONNX (with torch's current exporter, ``dynamo=True`` via onnxscript) and
TorchScript, with a dynamic batch dimension; and the ONNX file cache workers share.

Exporting a resnet takes seconds to tens of seconds, so a worker exports a model version once
and keeps the file: next to the version's weights in the registry (written with a conditional
write, so racing workers write it once), or for references outside the registry (``random:``,
``torchvision:``) in a local cache folder. Later workers load the file instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from rstream.shared.errors import NotFoundError, PreconditionFailed, RstreamError
from rstream.shared.models import refs
from rstream.shared.models.registry import Registry
from rstream.worker.model.loader import LoadedModel

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
    """The ONNX bytes of ``loaded``: from the cache when a worker exported it before, else
    exported now and cached for the next ones."""
    ref = refs.parse(loaded.model_id)
    if ref.kind == "registry" and ref.version and registry is not None:
        return _from_registry(loaded, registry, ref.name, ref.version)
    return _from_local_cache(loaded)


def _from_registry(loaded: LoadedModel, registry: Registry, name: str, version: str) -> bytes:
    uri = registry.version_uri(name, version, ONNX_NAME)
    try:
        return registry.storage.read(uri)
    except NotFoundError:
        pass
    data = onnx_bytes(loaded.module, loaded.preprocessing.crop)
    try:
        registry.storage.write(uri, data, if_none_match=True)
        logger.info("%s: exported to ONNX and kept at %s", loaded.model_id, uri)
    except PreconditionFailed:  # another worker wrote it meanwhile: theirs is as good
        pass
    except RstreamError as exc:  # a read-only registry, storage down: serve it uncached
        logger.warning("cannot keep the ONNX export of %s at %s (%s); exported in memory",
                       loaded.model_id, uri, exc)
    return data


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "rstream" / "onnx"


def _from_local_cache(loaded: LoadedModel) -> bytes:
    key = hashlib.sha256(f"{loaded.model_id}|{loaded.preprocessing.crop}|"
                         f"{torch.__version__}".encode()).hexdigest()[:24]
    path = cache_dir() / f"{key}.onnx"
    try:
        return path.read_bytes()
    except OSError:
        pass
    data = onnx_bytes(loaded.module, loaded.preprocessing.crop)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # whole or not at all
    except OSError as exc:
        logger.warning("cannot cache the ONNX export of %s in %s (%s)", loaded.model_id,
                       path.parent, exc)
    return data
