"""Thin Celery tasks: parse the message, call plain functions, act on the outcome, report."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject

from rstream.shared.constants import FINETUNE_TASK, INFER_QUEUE, INFER_TASK
from rstream.shared.errors import InvalidMessage
from rstream.shared.queue import deadletters
from rstream.shared.queue.messages import ChunkMessage
from rstream.shared.settings import Settings
from rstream.worker.runtime import metrics
from rstream.worker.serving.chunks import REDIS_ERRORS, Outcome, handle, log_fields
from rstream.worker.serving.state import ProcessState

logger = logging.getLogger(__name__)


def _retry(task: Task, exc: BaseException, delay: float) -> None:
    """``task.retry``, except that a retry that cannot be published requeues the message.

    Celery rejects a message without requeue when publishing its retry fails, which would
    lose the chunk.
    """
    try:
        task.retry(exc=exc, countdown=delay)
    except Reject as reject:
        raise Reject(reject.reason, requeue=True) from exc


def _dead_letter(state: ProcessState, task: Task, reason: str, message: object,
                 chunk: ChunkMessage | None = None) -> None:
    """Keep a task message that does not validate, with the reason; it is never run."""
    try:
        raw = json.dumps(message, default=repr)[:deadletters.RAW_LIMIT]
        deadletters.record(state.jobs.redis, reason, queue=INFER_QUEUE, raw=raw,
                           headers={"task": task.name, "id": task.request.id})
    except REDIS_ERRORS:
        logger.exception("could not keep the refused message in the dead-letter list")
    logger.error("chunk message %r refused and dead-lettered: %s", task.request.id, reason,
                 extra=log_fields(chunk) if chunk else {})
    if chunk is None:
        _stall_its_job(state, task.request.id, reason)
    metrics.count_chunk(chunk.model if chunk else "", "dead-lettered",
                        InvalidMessage.__name__)


def _stall_its_job(state: ProcessState, task_id: object, reason: str) -> None:
    """A chunk message that did not parse, whose task id names a chunk its job sent: the job
    says why that chunk has no part (``rstream status``), instead of waiting for it forever."""
    named = ChunkMessage.parse_task_id(task_id)
    if named is None:
        return
    job, chunk, generation = named
    try:
        if state.jobs.was_sent(job, chunk, generation) and \
                not state.jobs.is_done(job, chunk, generation):
            state.jobs.record_failure(job, chunk, generation, f"InvalidMessage: {reason}")
    except REDIS_ERRORS:
        logger.exception("could not record on job %s why chunk %d was refused", job, chunk)


def _count(chunk: ChunkMessage, outcome: Outcome, seconds: float) -> None:
    summary = outcome.summary
    if outcome.kind == "stalled":
        metrics.count_chunk(chunk.model, "stalled", type(outcome.error).__name__)
    elif "skipped" in summary:
        metrics.count_chunk(chunk.model, "skipped")
    elif "refused" in summary:  # a late writer: the part that is there was recorded instead
        metrics.count_chunk(chunk.model, "refused", "LateWrite")
    else:
        metrics.count_chunk(summary["model"], "done", images=summary,
                            failures=summary["errors"])
        metrics.CHUNK_SECONDS.observe(seconds)


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
        reason = type(outcome.error).__name__ if outcome.error is not None else ""
        if outcome.kind == "dead":
            _dead_letter(state, self, str(outcome.error), chunk.to_dict(), chunk)
            raise Reject(str(outcome.error), requeue=False)
        if outcome.kind == "retry":
            assert outcome.error is not None
            logger.warning("job %s chunk %d: %s; retry in %.1f s", chunk.job, chunk.chunk,
                           outcome.error, outcome.delay, extra=log_fields(chunk))
            metrics.count_chunk(chunk.model, "retried", reason)
            _retry(self, outcome.error, outcome.delay)
        if outcome.kind == "requeue":
            # Redis is the broker too: a retry message could not be published either. Put it
            # back; while Redis is down even that fails, and the unacked message is
            # redelivered after the visibility timeout.
            logger.warning("job %s chunk %d: Redis unreachable (%s); requeued", chunk.job,
                           chunk.chunk, outcome.error, extra=log_fields(chunk))
            metrics.count_chunk(chunk.model, "requeued", reason)
            raise Reject(str(outcome.error), requeue=True)
        logger.info("job %s chunk %d: %s", chunk.job, chunk.chunk,
                    outcome.summary or f"stalled: {outcome.error}",
                    extra=log_fields(chunk, outcome.summary.get("model")))
        _count(chunk, outcome, time.monotonic() - started)
        return outcome.summary or {"chunk": chunk.chunk, "stalled": str(outcome.error)}

    # Acked on receipt, not late: a fine-tune can outlast the visibility timeout, and one lost
    # with its trainer is simply run again by the next beat (or `rstream train`).
    @app.task(name=FINETUNE_TASK, bind=True, acks_late=False,
              time_limit=settings.train_time_limit,
              soft_time_limit=max(1, settings.train_time_limit - 60))
    def finetune(self: Task, **options: Any) -> dict[str, Any]:
        from rstream.worker.finetune.task import train_once

        return train_once(settings, self.request.id or "manual", **options)

    return state
