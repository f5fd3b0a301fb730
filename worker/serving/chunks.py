"""One chunk of a job, end to end: score its images, write its part, record it, finish the job.

Plain functions: the Celery task in worker/tasks.py parses the message, calls :func:`handle`
and does what the :class:`Outcome` says. Every chunk ends in exactly one of three ways:

- ``done``: its part is written and recorded (or it was skipped: a duplicate, a cancelled job);
- ``retry`` / ``requeue``: a transient fault (storage, within the chunk's retries), or Redis
  unreachable (the message goes back; while Redis is down it is redelivered after the
  visibility timeout);
- ``stalled``: the job record says why, at once, for ``rstream status`` and ``wait``; the
  chunk is sent again by ``rstream resume`` once the cause is fixed.

A message that its job record does not vouch for is ``dead`` (dead-lettered, never run).
Every step is idempotent: a redelivered chunk rewrites the same part (its key comes from the
job and the chunk index) and is counted once (see shared/jobs/store.py).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from celery.exceptions import SoftTimeLimitExceeded

from rstream.shared.errors import (
    InvalidMessage,
    JobFailed,
    PermanentError,
    PreconditionFailed,
    RstreamError,
    TransientError,
)
from rstream.shared.jobs.finish import finish
from rstream.shared.jobs.resend import unfinished
from rstream.shared.jobs.results import (
    Line,
    count_lines,
    encode,
    error_line,
    failure_reasons,
    part_uri,
    read_part,
    read_part_versioned,
    replace_lines,
    scored_by,
)
from rstream.shared.jobs.store import CANCELLED, FAILED, Job, JobStore
from rstream.shared.logs import chunk_fields
from rstream.shared.queue.messages import ChunkMessage
from rstream.shared.storage import Storage

logger = logging.getLogger(__name__)

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)
TRANSIENT = (TransientError, SoftTimeLimitExceeded)
MAX_BACKOFF_S = 60.0


class Scorer(Protocol):
    def score(self, uris: list[str], model_ref: str) -> list[Line]: ...


@dataclass
class ChunkContext:
    """What a chunk needs from its worker process."""

    engine: Scorer
    storage: Storage
    jobs: JobStore


@dataclass
class Outcome:
    """How a chunk ended; the task acts on ``kind``."""

    kind: str  # "done" | "retry" | "requeue" | "stalled" | "dead"
    summary: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    delay: float = 0.0  # retry: seconds to wait


def handle(message: ChunkMessage, jobs: JobStore, context: Callable[[], ChunkContext], *,
           retries: int, max_retries: int) -> Outcome:
    """Run the chunk and decide its outcome; never raises for anything the chunk did.

    ``context`` builds the process's engine on first use (which may fail: a bad device, a
    broken install); ``jobs`` is always at hand to record a stall. ``retries`` is how many
    times this chunk was retried already.
    """
    give_up: BaseException | None = None
    try:
        return Outcome("done", run_chunk(message, context()))
    except InvalidMessage as exc:
        return Outcome("dead", error=exc)
    except REDIS_ERRORS as exc:
        return Outcome("requeue", error=exc)
    except TRANSIENT as exc:
        if retries < max_retries:
            delay = min(MAX_BACKOFF_S, 2.0 ** retries) * random.uniform(0.5, 1.0)
            return Outcome("retry", error=exc, delay=delay)
        give_up = exc
    except Exception as exc:
        return _stall(message, jobs, exc)
    logger.error("job %s chunk %d: %s after %d retries; writing error lines", message.job,
                 message.chunk, give_up, retries, extra=log_fields(message))
    try:
        return Outcome("done", run_chunk(message, context(), give_up=give_up))
    except REDIS_ERRORS as exc:
        return Outcome("requeue", error=exc)
    except Exception as exc:  # the error lines cannot be written either (storage down)
        return _stall(message, jobs, exc)


def _stall(message: ChunkMessage, jobs: JobStore, exc: Exception) -> Outcome:
    """Record in the job that this chunk has no part, and why; requeue if even that fails."""
    if isinstance(exc, RstreamError):
        logger.error("job %s chunk %d stalled: %s", message.job, message.chunk, exc,
                     extra=log_fields(message))
    else:  # not one of ours: a bug or a library surprise; keep the traceback
        logger.exception("job %s chunk %d stalled on an unexpected error", message.job,
                         message.chunk, extra=log_fields(message))
    reason = f"{type(exc).__name__}: {exc}"
    try:
        jobs.record_failure(message.job, message.chunk, message.generation, reason)
    except REDIS_ERRORS as redis_exc:
        return Outcome("requeue", error=redis_exc)
    return Outcome("stalled", error=exc)


def run_chunk(message: ChunkMessage, ctx: ChunkContext,
              give_up: BaseException | None = None) -> dict[str, Any]:
    """Score, write, record; returns a small summary for the task result and the logs.

    ``give_up`` (the last transient error, once retries are spent) writes an error line for
    every URI instead of scoring, so the job still ends with one line per image.
    InvalidMessage when the job record does not vouch for the message.
    """
    job = check_against_record(message, ctx.jobs)
    if job.status == CANCELLED:
        return {"chunk": message.chunk, "skipped": "job cancelled"}
    if ctx.jobs.is_done(message.job, message.chunk, message.generation):
        return {"chunk": message.chunk, "skipped": "already done"}  # a redelivered duplicate
    if job.status == FAILED:  # its model cannot be loaded: no need to try again here
        lines = _error_lines(message, JobFailed(job.last_error))
    elif give_up is not None:
        lines = _error_lines(message, give_up)
    else:
        lines = _score(message, ctx)
    return write_part(message, ctx, lines)


def write_part(message: ChunkMessage, ctx: ChunkContext, lines: list[Line]) -> dict[str, Any]:
    """Write the chunk's part (a retry replaces its URIs' lines), record it, and write the
    manifest if that finished the job. The summary counts ``lines``: what this task wrote,
    with the model that scored them and the failures by error class.

    The late-writer rule: a writer that finds the chunk's part already written for its
    generation (another worker redid the chunk while this one was paused or partitioned, or
    this very chunk crashed between its write and its record) does not write; it records
    the part that is there, counted from its lines, never from what it computed, so the
    job's counts and the part agree. Its summary says ``refused``.
    """
    assert len(lines) == len(message.uris), "one result line per URI"
    uri = part_uri(message.results, message.job, message.chunk)
    with_columns(lines, message.columns)
    part = _place(message, ctx, uri, lines)
    if part is None:
        return _adopt(message, ctx, uri, lines)
    counts = count_lines(lines)
    summary = {"chunk": message.chunk, "ok": counts["ok"], "failed": counts["failed"],
               "model": scored_by(lines) or message.model, "errors": failure_reasons(lines)}
    _record(message, ctx, part)
    return summary


def _place(message: ChunkMessage, ctx: ChunkContext, uri: str,
           lines: list[Line]) -> list[Line] | None:
    """Write the part unless it is already written for this generation; the part written,
    or None when refused.

    Generation 0 creates the part only if absent (an atomic conditional create on local
    storage and on S3). A retry generation replaces lines of the part that is there: it is
    fenced by its own done flag, checked between reading the part and writing it only if the
    part is unchanged since read (if_match); see docs/limits.md for the window left.
    """
    if message.generation == 0:
        try:
            ctx.storage.write(uri, encode(lines), if_none_match=True)
        except PreconditionFailed:
            return None
        return lines
    existing, etag = read_part_versioned(ctx.storage, uri)
    if ctx.jobs.is_done(message.job, message.chunk, message.generation):
        return None
    kept = {line["uri"]: line["columns"] for line in existing if "columns" in line}
    for line in lines:  # a retried image keeps the columns it was submitted with
        if line["uri"] in kept:
            line.setdefault("columns", kept[line["uri"]])
    part = replace_lines(existing, lines)
    try:
        ctx.storage.write(uri, encode(part), if_match=etag)
    except PreconditionFailed:
        return None
    return part


def _adopt(message: ChunkMessage, ctx: ChunkContext, uri: str,
           lines: list[Line]) -> dict[str, Any]:
    """Record the part that another writer put there, counted from its own lines."""
    existing = read_part(ctx.storage, uri)
    ours = {line["uri"]: line for line in lines}
    same = all(ours.get(line["uri"], line) == line for line in existing)
    logger.warning("job %s chunk %d (generation %d): part already written by another attempt; "
                   "late write refused (%s), recording the part that is there",
                   message.job, message.chunk, message.generation,
                   "same lines" if same else "its lines differ from this attempt's",
                   extra=log_fields(message))
    _record(message, ctx, existing)
    return {"chunk": message.chunk, "refused": "part already written", "same": same}


def _record(message: ChunkMessage, ctx: ChunkContext, part: list[Line]) -> None:
    ended = ctx.jobs.complete(message.job, message.chunk, message.generation, count_lines(part))
    finish(ctx.storage, ctx.jobs, message.job, ended=ended, log_fields=log_fields(message))


def with_columns(lines: list[Line], columns: list[dict[str, Any]] | None) -> None:
    """Put each URI's kept columns (a table source's) into its line, as ``columns``."""
    if columns is not None:
        for line, kept in zip(lines, columns, strict=True):
            line["columns"] = kept


def check_against_record(message: ChunkMessage, jobs: JobStore) -> Job:
    """The job record, when it vouches for ``message``: the job exists, writes where the
    message says, and sent this very chunk. InvalidMessage otherwise (a forged or stale
    message must not write a part or change the counts)."""
    try:
        job = jobs.get(message.job)
    except PermanentError as exc:
        raise InvalidMessage(f"chunk message for an unknown job: {exc}") from None
    if message.results != job.results:
        raise InvalidMessage(f"chunk message writes to {message.results!r}, but job "
                             f"{message.job} writes to {job.results!r}")
    if not jobs.was_sent(message.job, message.chunk, message.generation):
        raise InvalidMessage(f"job {message.job} never sent chunk {message.chunk} "
                             f"(generation {message.generation})")
    return job


def _score(message: ChunkMessage, ctx: ChunkContext) -> list[Line]:
    try:
        return ctx.engine.score(message.uris, message.model)
    except PermanentError as exc:  # the model cannot be resolved or loaded: no retry helps
        reason = f"{type(exc).__name__}: {exc}"
        if ctx.jobs.fail(message.job, reason):
            logger.error("job %s failed: %s", message.job, reason, extra=log_fields(message))
            threading.Thread(target=finish_failed_job, args=(message, ctx, reason),
                             name=f"rstream-fail-{message.job}", daemon=True).start()
        return _error_lines(message, JobFailed(reason))


def finish_failed_job(message: ChunkMessage, ctx: ChunkContext, reason: str) -> int:
    """Give every other sent chunk of a failed job its error lines now, from the input
    record, so the job ends at once instead of as its messages come up in the queue (they
    are skipped then: already done). Returns how many chunks it wrote."""
    written = 0
    try:
        job = ctx.jobs.get(message.job)
        for item in unfinished(ctx.storage, ctx.jobs, job):
            if item.sent and item.chunk != message.chunk:
                failed = ChunkMessage(job.id, item.chunk, item.uris, job.model, job.results,
                                      columns=item.columns)
                write_part(failed, ctx, _error_lines(failed, JobFailed(reason)))
                written += 1
    except Exception:  # the queued messages still give these chunks their lines
        logger.exception("job %s: could not write the failed job's remaining parts now",
                         message.job, extra=log_fields(message))
    return written


def log_fields(message: ChunkMessage, model: str | None = None) -> Mapping[str, Any]:
    """The structured fields of a chunk's log lines (``RSTREAM_LOG_FORMAT=json``)."""
    return chunk_fields(message.job, message.chunk, model or message.model,
                        generation=message.generation)


def _error_lines(message: ChunkMessage, exc: BaseException) -> list[Line]:
    return [error_line(uri, exc) for uri in message.uris]
