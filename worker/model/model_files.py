"""Files made from one model version (its ONNX export, its int8 builds), kept where the next
worker finds them instead of making them again.

A registry version keeps them beside its weights, written with a conditional write so that
racing workers write each once. A reference outside the registry (``random:``,
``torchvision:``) keeps them in this machine's cache folder, under a key of the reference, the
crop and torch's version, written whole or not at all. A store that cannot keep a file (a
read-only registry, storage down, a full disk) is logged; the caller uses what it made.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from rstream.shared.errors import NotFoundError, PreconditionFailed, RstreamError
from rstream.shared.models import refs
from rstream.shared.models.registry import Registry
from rstream.worker.model.loader import LoadedModel

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "rstream" / "onnx"


class ModelFiles:
    """The kept files of ``loaded``, by name (``model.onnx``, ``model-int8-KEY.onnx``)."""

    def __init__(self, loaded: LoadedModel, registry: Registry | None) -> None:
        ref = refs.parse(loaded.model_id)
        self.model_id = loaded.model_id
        self._registry = registry if ref.kind == "registry" and ref.version else None
        self._version = (ref.name, ref.version or "")
        self._local_key = hashlib.sha256(f"{loaded.model_id}|{loaded.preprocessing.crop}|"
                                         f"{torch.__version__}".encode()).hexdigest()[:24]

    def where(self, name: str) -> str:
        if self._registry is not None:
            return self._registry.version_uri(*self._version, name)
        return str(cache_dir() / f"{self._local_key}-{name}")

    def read(self, name: str) -> bytes | None:
        """The file's bytes; None when it was never kept."""
        try:
            if self._registry is not None:
                return self._registry.storage.read(self.where(name))
            return Path(self.where(name)).read_bytes()
        except (NotFoundError, OSError):
            return None

    def keep(self, name: str, data: bytes) -> None:
        """Keep the file for the next workers; a copy another worker kept first stays (it is
        made from the same version, so it is as good)."""
        where = self.where(name)
        try:
            if self._registry is not None:
                self._registry.storage.write(where, data, if_none_match=True)
            else:
                path = Path(where)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)  # whole or not at all
            logger.info("%s: kept %s at %s", self.model_id, name, where)
        except PreconditionFailed:
            pass
        except (RstreamError, OSError) as exc:
            logger.warning("%s: cannot keep %s at %s (%s); made in memory only",
                           self.model_id, name, where, exc)
