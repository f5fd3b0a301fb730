"""Compiled forwards of the eager backend (``RSTREAM_FORWARD``): torch.compile, or CUDA graphs.

Both want static shapes, so a batch runs at the size of its *bucket*: the smallest of
``max_batch``, ``max_batch / 4``, ``max_batch / 16``, ... 1 that holds it, padded with zero
images whose rows are dropped after the forward (rows of an eval-mode ResNet do not mix).
One compiled graph, or one captured CUDA graph, exists per bucket, all made at start-up (the
warm-up, timed, logged and shown in ``/readyz``), so no batch waits for a compile.

- ``compile``: ``torch.compile`` (inductor, static shapes), on CUDA or the CPU. Its cache
  lives on disk (``TORCHINDUCTOR_CACHE_DIR``, default ``~/.cache/rstream/inductor``), so a
  restarted worker reuses the compiled kernels instead of compiling again.
- ``cudagraphs``: the eager module (under the configured autocast) captured in one CUDA graph
  per bucket, with static input and output buffers and one memory pool shared by all graphs;
  CUDA only.

The eager forward stays the default on every device until a GPU has measured these.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rstream.shared.errors import ConfigError
from rstream.worker.model.loader import LoadedModel
from rstream.worker.model.model_files import cache_dir
from rstream.worker.model.predict import Predictor

logger = logging.getLogger(__name__)

FORWARDS = ("eager", "compile", "cudagraphs")
BUCKET_STEP = 4  # each bucket is a quarter of the next: a padded batch costs at most 4x


def buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes that run: ``max_batch`` and its successive quarters, down to 1."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, not {max_batch}")
    sizes, size = {max_batch}, max_batch
    while size > 1:
        size = max(1, size // BUCKET_STEP)
        sizes.add(size)
    return tuple(sorted(sizes))


def bucket_for(count: int, sizes: tuple[int, ...]) -> int:
    """The smallest bucket that holds ``count`` images (``count`` <= the largest)."""
    for size in sizes:
        if count <= size:
            return size
    raise ValueError(f"{count} images exceed the largest bucket, {sizes[-1]}")


def pad(x: Tensor, size: int) -> Tensor:
    """``x`` with zero rows appended up to ``size`` rows."""
    if len(x) == size:
        return x
    filler = x.new_zeros((size - len(x), *x.shape[1:]))
    return torch.cat([x, filler]).contiguous(memory_format=torch.channels_last)


def inductor_cache() -> str:
    """The on-disk compile cache: ``TORCHINDUCTOR_CACHE_DIR``, set to rstream's cache folder
    when it is not set, before the first compile reads it."""
    default = str(cache_dir().parent / "inductor")
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", default)


class CompiledPredictor(Predictor):
    """A :class:`Predictor` whose forward runs compiled, at bucketed batch sizes."""

    def __init__(self, loaded: LoadedModel, device: torch.device, precision: str = "auto",
                 topk: int = 5, *, forward: str = "compile", max_batch: int = 64,
                 compile_backend: str = "inductor") -> None:
        if forward not in ("compile", "cudagraphs"):
            raise ConfigError(f"RSTREAM_FORWARD={forward!r} is not a compiled forward: use "
                              "compile or cudagraphs")
        if forward == "cudagraphs" and device.type != "cuda":
            raise ConfigError(f"RSTREAM_FORWARD=cudagraphs needs CUDA, not {device}: use "
                              "RSTREAM_FORWARD=compile (or eager) on the CPU")
        super().__init__(loaded, device, precision, topk)
        self.forward = forward
        self.buckets = buckets(max_batch)
        self._runs: dict[int, Callable[[Tensor], Tensor]] = {}
        if forward == "compile":
            inductor_cache()
            # Dynamo keeps its graphs per code object, and every ResNet shares one forward:
            # room for a graph per bucket of each version the engine keeps, and one reload.
            limit = torch._dynamo.config.cache_size_limit
            torch._dynamo.config.cache_size_limit = max(limit, 5 * len(self.buckets))
            compiled = torch.compile(self.module, backend=compile_backend, dynamic=False)
            self._runs = {size: self._autocast(compiled) for size in self.buckets}
        self.warmup = self._warm_up()

    def __repr__(self) -> str:
        return (f"CompiledPredictor({self.model_id!r}, {self.device}, {self.precision}, "
                f"{self.forward}, buckets {list(self.buckets)})")

    def warmup_note(self) -> str:
        """One line for the logs and ``/readyz``."""
        return _note(self.warmup)

    def _autocast(self, fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        def run(x: Tensor) -> Tensor:
            with torch.autocast(self.device.type, dtype=self.dtype,
                                enabled=self.dtype is not None, cache_enabled=False):
                return fn(x)
        return run

    def _warm_up(self) -> dict[str, Any]:
        """Compile (or capture) every bucket now, largest first; the seconds each took."""
        crop = self.preprocessing.crop
        per_bucket: dict[str, float] = {}
        began = time.monotonic()
        with torch.inference_mode():
            for size in reversed(self.buckets):
                start = time.monotonic()
                x = torch.zeros(size, 3, crop, crop, device=self.device).contiguous(
                    memory_format=torch.channels_last)
                if self.forward == "cudagraphs":
                    self._runs[size] = self._capture(x)
                self._runs[size](x)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                per_bucket[str(size)] = round(time.monotonic() - start, 3)
        warmup = {"forward": self.forward, "buckets": list(self.buckets),
                  "seconds": round(time.monotonic() - began, 3), "per_bucket_s": per_bucket}
        logger.info("%s: %s", self.model_id, _note(warmup))
        return warmup

    def _capture(self, static_in: Tensor) -> Callable[[Tensor], Tensor]:
        """One CUDA graph of the eager forward at ``static_in``'s shape."""
        eager = self._autocast(self.module)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # cuDNN picks its algorithms before capture, not during it
                eager(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if not hasattr(self, "_pool"):
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = eager(static_in)

        def replay(x: Tensor) -> Tensor:
            if x.data_ptr() != static_in.data_ptr():
                static_in.copy_(x)
            graph.replay()
            return static_out.clone()  # the next replay overwrites static_out
        return replay

    def _logits(self, x: Tensor) -> Tensor:
        largest = self.buckets[-1]
        pieces = []
        for start in range(0, len(x), largest):
            piece = x[start:start + largest]
            size = bucket_for(len(piece), self.buckets)
            pieces.append(self._runs[size](pad(piece, size))[:len(piece)])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _note(warmup: dict[str, Any]) -> str:
    return (f"forward {warmup['forward']}, warm-up {warmup['seconds']:.1f} s for buckets "
            f"{', '.join(map(str, warmup['buckets']))}")
