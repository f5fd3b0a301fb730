"""Thin Celery tasks: parse the message, call plain functions, act on the outcome, report."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutdown

from shared import deadletters
from shared.celery_app import send_chunk
from shared.constants import FINETUNE_TASK, INFER_QUEUE, INFER_TASK
from shared.errors import InvalidMessage
from shared.jobs import JobStore
from shared.messages import ChunkMessage
from shared.registry import Registry
from shared.settings import Settings
from shared.storage import Storage
from worker import metrics
from worker.chunks import REDIS_ERRORS, ChunkContext, Outcome, handle
from worker.heartbeat import Heartbeat
from worker.sweeper import Sweeper

logger = logging.getLogger(__name__)


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

    def context(self) -> ChunkContext:
        with self._lock:
            if self._context is None:
                from worker.engine import Engine

                storage = Storage(self.settings)
                registry = Registry(storage, self.settings.models)
                engine = Engine(self.settings, storage, registry)
                self._context = ChunkContext(engine, storage, self.jobs)
            return self._context

    def close(self) -> None:
        with self._lock:
            if self._context is not None:
                self._context.engine.close()  # type: ignore[attr-defined]
                self._context = None


def _retry(task: Task, exc: BaseException, delay: float) -> None:
    """``task.retry``, except that a retry that cannot be published requeues the message.

    Celery rejects a message without requeue when publishing its retry fails, which would
    lose the chunk.
    """
    try:
        task.retry(exc=exc, countdown=delay)
    except Reject as reject:
        raise Reject(reject.reason, requeue=True) from exc


def _dead_letter(state: ProcessState, task: Task, reason: str, message: object) -> None:
    """Keep a task message that does not validate, with the reason; it is never run."""
    try:
        raw = json.dumps(message, default=repr)[:deadletters.RAW_LIMIT]
        deadletters.record(state.jobs.redis, reason, queue=INFER_QUEUE, raw=raw,
                           headers={"task": task.name, "id": task.request.id})
    except REDIS_ERRORS:
        logger.exception("could not keep the refused message in the dead-letter list")
    logger.error("chunk message %s refused and dead-lettered: %s", task.request.id, reason)
    metrics.CHUNKS.labels("dead-lettered").inc()


def _count(outcome: Outcome, seconds: float) -> None:
    summary = outcome.summary
    if outcome.kind == "stalled":
        metrics.CHUNKS.labels("stalled").inc()
    elif "skipped" in summary:
        metrics.CHUNKS.labels("skipped").inc()
    else:
        metrics.CHUNKS.labels("done").inc()
        metrics.CHUNK_SECONDS.observe(seconds)
        metrics.IMAGES.labels("ok").inc(summary["ok"])
        metrics.IMAGES.labels("failed").inc(summary["failed"])


def register(app: Celery, settings: Settings) -> ProcessState:
    """Add rstream's tasks to ``app``; returns the process state they share."""
    state = ProcessState(settings)

    @app.task(name=INFER_TASK, bind=True, max_retries=settings.task_max_retries)
    def infer_chunk(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            if args or set(kwargs) != {"message"}:
                raise InvalidMessage("an infer task takes one keyword argument, message")
            chunk = ChunkMessage.from_dict(kwargs["message"])
        except InvalidMessage as exc:
            _dead_letter(state, self, str(exc), {"args": args, "kwargs": kwargs})
            raise Reject(str(exc), requeue=False) from exc
        started = time.monotonic()
        outcome = handle(chunk, state.jobs, state.context, retries=self.request.retries,
                         max_retries=settings.task_max_retries)
        if outcome.kind == "dead":
            _dead_letter(state, self, str(outcome.error), chunk.to_dict())
            raise Reject(str(outcome.error), requeue=False)
        if outcome.kind == "retry":
            assert outcome.error is not None
            logger.warning("job %s chunk %d: %s; retry in %.1f s", chunk.job, chunk.chunk,
                           outcome.error, outcome.delay)
            _retry(self, outcome.error, outcome.delay)
        if outcome.kind == "requeue":
            # Redis is the broker too: a retry message could not be published either. Put it
            # back; while Redis is down even that fails, and the unacked message is
            # redelivered after the visibility timeout.
            logger.warning("job %s chunk %d: Redis unreachable (%s); requeued", chunk.job,
                           chunk.chunk, outcome.error)
            raise Reject(str(outcome.error), requeue=True)
        logger.info("job %s chunk %d: %s", chunk.job, chunk.chunk,
                    outcome.summary or f"stalled: {outcome.error}")
        _count(outcome, time.monotonic() - started)
        return outcome.summary or {"chunk": chunk.chunk, "stalled": str(outcome.error)}

    # Acked on receipt, not late: a fine-tune can outlast the visibility timeout, and one lost
    # with its trainer is simply run again by the next beat (or `rstream train`).
    @app.task(name=FINETUNE_TASK, bind=True, acks_late=False,
              time_limit=settings.train_time_limit,
              soft_time_limit=max(1, settings.train_time_limit - 60))
    def finetune(self: Task, **options: Any) -> dict[str, Any]:
        from worker.finetune.task import train_once

        return train_once(settings, self.request.id or "manual", **options)

    background: list[Heartbeat | Sweeper] = []

    @worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        metrics.serve(settings.metrics_port)
        queues = [queue.name for queue in getattr(sender.task_consumer, "queues", ())]
        background.append(Heartbeat(state.jobs.redis, sender.hostname, queues,
                                    concurrency=getattr(sender.pool, "limit", None),
                                    device=settings.device).start())
        if INFER_QUEUE in queues:
            background.append(Sweeper(settings, state.jobs, Storage(settings),
                                      lambda message: send_chunk(app, message),
                                      sender.hostname).start())

    @worker_shutdown.connect(weak=False)
    def _close(**_: Any) -> None:
        for thread in background:
            thread.stop()
        state.close()

    return state
