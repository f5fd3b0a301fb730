"""Thin Celery tasks: parse the message, call plain functions, report."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutdown

from shared.constants import FINETUNE_TASK, INFER_TASK
from shared.errors import PermanentError, TransientError
from shared.jobs import JobStore
from shared.messages import ChunkMessage
from shared.registry import Registry
from shared.settings import Settings
from shared.storage import Storage
from worker import metrics
from worker.chunks import ChunkContext, run_chunk

logger = logging.getLogger(__name__)

RETRYABLE = (TransientError, redis.ConnectionError, redis.TimeoutError)


class ProcessState:
    """The one engine of this worker process, built on first use, in this process.

    Building it lazily keeps torch, CUDA and the model out of any parent process that forks
    and out of module import.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._context: ChunkContext | None = None

    def context(self) -> ChunkContext:
        with self._lock:
            if self._context is None:
                from worker.engine import Engine

                storage = Storage(self.settings)
                registry = Registry(storage, self.settings.models)
                engine = Engine(self.settings, storage, registry)
                jobs = JobStore.from_url(self.settings.redis_url, self.settings.job_ttl)
                self._context = ChunkContext(engine, storage, jobs)
            return self._context

    def close(self) -> None:
        with self._lock:
            if self._context is not None:
                self._context.engine.close()  # type: ignore[attr-defined]
                self._context = None


def _retry(task: Task, exc: Exception, delay: float) -> None:
    """``task.retry``, except that a retry that cannot be published requeues the message.

    Celery rejects a message without requeue when publishing its retry fails, which would
    lose the chunk.
    """
    try:
        task.retry(exc=exc, countdown=delay)
    except Reject as reject:
        raise Reject(reject.reason, requeue=True) from exc


def _count(summary: dict[str, Any], seconds: float) -> None:
    if "skipped" in summary:
        metrics.CHUNKS.labels("skipped").inc()
        return
    metrics.CHUNKS.labels("done").inc()
    metrics.CHUNK_SECONDS.observe(seconds)
    metrics.IMAGES.labels("ok").inc(summary["ok"])
    metrics.IMAGES.labels("failed").inc(summary["failed"])


def register(app: Celery, settings: Settings) -> ProcessState:
    """Add rstream's tasks to ``app``; returns the process state they share."""
    state = ProcessState(settings)

    @app.task(name=INFER_TASK, bind=True, max_retries=settings.task_max_retries)
    def infer_chunk(self: Task, message: dict[str, Any]) -> dict[str, Any]:
        chunk = ChunkMessage.from_dict(message)
        started = time.monotonic()
        try:
            summary = run_chunk(chunk, state.context())
        except RETRYABLE as exc:
            if isinstance(exc, redis.RedisError):
                # Redis is the broker too: a retry message could not be published, and Celery
                # would drop the chunk (reject without requeue). Put it back instead; while
                # Redis is down even that fails, and the unacked message is redelivered after
                # the visibility timeout.
                logger.warning("job %s chunk %d: Redis unreachable (%s); requeued", chunk.job,
                               chunk.chunk, exc)
                raise Reject(exc, requeue=True) from exc
            if self.request.retries < settings.task_max_retries:
                delay = min(60.0, 2.0 ** self.request.retries) * random.uniform(0.5, 1.0)
                logger.warning("job %s chunk %d: %s; retry in %.1f s", chunk.job, chunk.chunk,
                               exc, delay)
                _retry(self, exc, delay)
            logger.error("job %s chunk %d: %s after %d retries; writing error lines",
                         chunk.job, chunk.chunk, exc, self.request.retries)
            summary = run_chunk(chunk, state.context(), give_up=exc)
        except PermanentError as exc:  # the part cannot be written (refused, no such bucket)
            logger.exception("job %s chunk %d: its part cannot be written", chunk.job,
                             chunk.chunk)
            metrics.CHUNKS.labels("stalled").inc()
            state.context().jobs.record_failure(chunk.job, chunk.chunk, chunk.generation,
                                                f"{type(exc).__name__}: {exc}")
            raise
        logger.info("job %s chunk %d: %s", chunk.job, chunk.chunk, summary)
        _count(summary, time.monotonic() - started)
        return summary

    # Acked on receipt, not late: a fine-tune can outlast the visibility timeout, and one lost
    # with its trainer is simply run again by the next beat (or `rstream train`).
    @app.task(name=FINETUNE_TASK, bind=True, acks_late=False,
              time_limit=settings.train_time_limit,
              soft_time_limit=max(1, settings.train_time_limit - 60))
    def finetune(self: Task, **options: Any) -> dict[str, Any]:
        from worker.finetune.task import train_once

        return train_once(settings, self.request.id or "manual", **options)

    @worker_ready.connect(weak=False)
    def _serve_metrics(**_: Any) -> None:
        metrics.serve(settings.metrics_port)

    @worker_shutdown.connect(weak=False)
    def _close(**_: Any) -> None:
        state.close()

    return state
