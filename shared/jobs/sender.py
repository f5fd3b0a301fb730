"""How a chunk message leaves, whoever sends it (a submission, a retry, a watcher, the
sweeper): wait for room in the infer queue, count the chunk as sent in the job record, then
publish its task, whose id comes from (job, chunk, generation), so a chunk sent again is the
same task."""

from __future__ import annotations

import threading
import time
from typing import Any

from celery import Celery

from rstream.shared.constants import INFER_QUEUE
from rstream.shared.jobs.store import Job, JobStore
from rstream.shared.queue.app import send_chunk
from rstream.shared.queue.inspect import queued
from rstream.shared.queue.messages import ChunkMessage


class ChunkSender:
    """Sends the chunks of any job through ``app``, counting them in ``jobs``."""

    def __init__(self, jobs: JobStore, app: Celery) -> None:
        self.jobs, self.app = jobs, app

    def pending(self) -> int:
        """Chunk messages waiting in the infer queue (not counting ones being worked on)."""
        return queued(self.jobs.redis, INFER_QUEUE)

    def wait_for_room(self, limit: int, stop: threading.Event | None = None) -> bool:
        """Block while the infer queue holds ``limit`` chunks or more (0: never block);
        False when ``stop`` was set meanwhile (a watcher told to stop)."""
        delay = 0.05
        while limit and self.pending() >= limit:
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                return False
            delay = min(delay * 2, 1.0)
        return stop is None or not stop.is_set()

    def send(self, job: Job, chunk: int, uris: list[str], generation: int = 0,
             columns: list[dict[str, Any]] | None = None) -> None:
        """Count the chunk as sent (once per chunk and generation), then publish it;
        ``columns``: its URIs' kept columns (a table source)."""
        self.jobs.mark_sent(job.id, chunk, generation, len(uris))
        self.publish(ChunkMessage(job.id, chunk, uris, job.model, job.results, generation,
                                  columns))

    def publish(self, message: ChunkMessage) -> None:
        """Publish one chunk task (already counted as sent)."""
        send_chunk(self.app, message)
