"""What the tasks of one worker process share: the job store, and the one engine (built lazily,
in this process, on first use)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from rstream.shared.jobs.store import JobStore
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.worker.serving.batcher import Batcher
from rstream.worker.serving.chunks import ChunkContext

if TYPE_CHECKING:
    from rstream.worker.model.predict import Predictor
    from rstream.worker.serving.engine import Engine


class ProcessState:
    """What the tasks of this worker process share: the job store, and the one engine.

    The engine is built lazily, on first use, in this process: that keeps torch, CUDA and
    the model out of any parent process that forks and out of module import. The job store
    is cheap and always at hand, so a chunk can record why it stalled even when the engine
    cannot be built.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jobs = JobStore.from_url(settings.redis_url, settings.job_ttl)
        self._lock = threading.Lock()
        self._context: ChunkContext | None = None
        self._engine: Engine | None = None

    def context(self) -> ChunkContext:
        with self._lock:
            if self._context is None:
                from rstream.worker.serving.engine import Engine

                storage = Storage(self.settings)
                registry = Registry(storage, self.settings.models)
                self._engine = Engine(self.settings, storage, registry)
                self._context = ChunkContext(self._engine, storage, self.jobs)
            return self._context

    def load(self, ref: str) -> Predictor:
        """Load model ``ref`` now (and the engine, on first use)."""
        self.context()
        assert self._engine is not None
        return self._engine.predictor_for(ref)

    def batcher(self) -> Batcher | None:
        """The model thread, once the engine is built; None before."""
        engine = self._engine
        return engine.batcher if engine is not None else None

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
            self._context, self._engine = None, None
