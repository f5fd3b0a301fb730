"""How a chunk message leaves, whoever sends it (a submission, a retry, a watcher, the
sweeper): wait for room in the infer queue, count the chunk as sent in the job record, then
publish its task, whose id comes from (job, chunk, generation), so a chunk sent again is the
same task.

The mark always goes first and the message after it: a worker refuses a chunk that its job
did not record as sent, and a producer that dies between the two leaves a chunk marked and
not queued, which the resend rule (``resend.py``) finds and sends again; the other order
would leave a chunk queued and never counted, and a job that ends without it. Many chunks
(:meth:`ChunkSender.send_many`) keep that order as a whole: every mark in one pipelined
call, then every message in one pipelined publish.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery

from rstream.shared.constants import INFER_QUEUE
from rstream.shared.jobs.store import Job, JobStore
from rstream.shared.queue.inspect import queued
from rstream.shared.queue.messages import ChunkMessage
from rstream.shared.queue.publish import send_chunk, send_chunks

# Chunks in one pipelined round trip of send_many (a segment of the input record at most).
SEND_BATCH = 256
# A chunk to send: its number, its URIs and their kept columns (None: a source without).
Outgoing = tuple[int, list[str], list[dict[str, Any]] | None]


class ChunkSender:
    """Sends the chunks of any job through ``app``, counting them in ``jobs``."""

    def __init__(self, jobs: JobStore, app: Celery) -> None:
        self.jobs, self.app = jobs, app

    def pending(self) -> int:
        """Chunk messages waiting in the infer queue (not counting ones being worked on)."""
        return queued(self.jobs.redis, INFER_QUEUE)

    def wait_for_room(self, limit: int, stop: threading.Event | None = None) -> int:
        """Block while the infer queue holds ``limit`` chunks or more (0: never block); then
        how many chunks fit (:data:`SEND_BATCH` at most), or 0 when ``stop`` was set
        meanwhile (a watcher told to stop)."""
        delay = 0.05
        while limit and (room := limit - self.pending()) <= 0:
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                return 0
            delay = min(delay * 2, 1.0)
        if stop is not None and stop.is_set():
            return 0
        return min(room, SEND_BATCH) if limit else SEND_BATCH

    def send(self, job: Job, chunk: int, uris: list[str], generation: int = 0,
             columns: list[dict[str, Any]] | None = None) -> None:
        """Count the chunk as sent (once per chunk and generation), then publish it;
        ``columns``: its URIs' kept columns (a table source)."""
        self.jobs.mark_sent(job.id, chunk, generation, len(uris))
        self.publish(ChunkMessage(job.id, chunk, uris, job.model, job.results, generation,
                                  columns))

    def send_many(self, job: Job, chunks: Sequence[Outgoing], generation: int = 0) -> None:
        """:meth:`send` for many chunks of one job, (chunk, URIs, columns) each, in two round
        trips per :data:`SEND_BATCH`: the marks of all, then the messages of all."""
        for start in range(0, len(chunks), SEND_BATCH):
            batch = chunks[start:start + SEND_BATCH]
            self.jobs.mark_sent_many(job.id, [(chunk, len(uris)) for chunk, uris, _ in batch],
                                     generation)
            send_chunks(self.app, [ChunkMessage(job.id, chunk, uris, job.model, job.results,
                                                generation, columns)
                                   for chunk, uris, columns in batch])

    def publish(self, message: ChunkMessage) -> None:
        """Publish one chunk task (already counted as sent)."""
        send_chunk(self.app, message)
