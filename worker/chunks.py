"""One chunk of a job, end to end: score its images, write its part, record it, finish the job.

Plain functions: the Celery task in worker/tasks.py only parses the message and calls
:func:`run_chunk`. Every step is idempotent: a redelivered chunk rewrites the same part (its
key comes from the job and the chunk index) and is counted once (see shared/jobs.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import PermanentError
from shared.jobs import CANCELLED, JobStore
from shared.manifest import write_manifest
from shared.messages import ChunkMessage
from shared.results import (
    Line,
    count_lines,
    encode,
    error_line,
    part_uri,
    read_part,
    replace_lines,
)
from shared.storage import Storage

logger = logging.getLogger(__name__)


class Scorer(Protocol):
    def score(self, uris: list[str], model_ref: str) -> list[Line]: ...


@dataclass
class ChunkContext:
    """What a chunk needs from its worker process."""

    engine: Scorer
    storage: Storage
    jobs: JobStore


def run_chunk(message: ChunkMessage, ctx: ChunkContext,
              give_up: Exception | None = None) -> dict[str, Any]:
    """Score, write, record; returns a small summary for the task result and the logs.

    ``give_up`` (the last transient error, once retries are spent) writes an error line for
    every URI instead of scoring, so the job still ends with one line per image.
    """
    job = ctx.jobs.get(message.job)
    if job.status == CANCELLED:
        return {"chunk": message.chunk, "skipped": "job cancelled"}
    if ctx.jobs.is_done(message.job, message.chunk, message.generation):
        return {"chunk": message.chunk, "skipped": "already done"}  # a redelivered duplicate
    lines = _score(message, ctx) if give_up is None else _error_lines(message, give_up)
    assert len(lines) == len(message.uris), "one result line per URI"
    uri = part_uri(message.results, message.job, message.chunk)
    if message.generation > 0:
        lines = replace_lines(read_part(ctx.storage, uri), lines)
    ctx.storage.write(uri, encode(lines))
    counts = count_lines(lines)
    if ctx.jobs.complete(message.job, message.chunk, message.generation, counts):
        manifest = write_manifest(ctx.storage, ctx.jobs, message.job)
        logger.info("job %s done: %d ok, %d failed", message.job, manifest["ok"],
                    manifest["failed"])
    return {"chunk": message.chunk, "ok": counts["ok"], "failed": counts["failed"]}


def _score(message: ChunkMessage, ctx: ChunkContext) -> list[Line]:
    try:
        return ctx.engine.score(message.uris, message.model)
    except PermanentError as exc:  # the model cannot be resolved or loaded: no retry helps
        logger.error("job %s chunk %d: %s", message.job, message.chunk, exc)
        return _error_lines(message, exc)


def _error_lines(message: ChunkMessage, exc: Exception) -> list[Line]:
    return [error_line(uri, exc) for uri in message.uris]
