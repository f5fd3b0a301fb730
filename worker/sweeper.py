"""The sweeper: chunks that were sent but are neither queued, running nor done are sent again.

kombu pops a message before it records it as unacknowledged, so a Redis killed at that
instant loses that one chunk message; the job would wait for a person to run ``rstream
resume``. Instead, every infer worker process runs this sweeper thread; one of them at a time
(a Redis lock) looks, every :func:`period_s`, at the running jobs for chunks last sent more
than the visibility timeout plus :func:`margin_s` ago that are not done, not stalled (those
wait for a person), not in a queue and not held unacknowledged by a worker. Each is sent
again, with its URIs from the job's input record; the job records count it once, so the
lines stay single.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from shared.celery_app import held_task_ids
from shared.constants import REDIS_PREFIX
from shared.inputs import InputRecord
from shared.jobs import Job, JobStore
from shared.messages import ChunkMessage
from shared.results import failed_uris
from shared.settings import Settings
from shared.storage import Storage

logger = logging.getLogger(__name__)

LOCK_KEY = REDIS_PREFIX + ":lock:sweeper"


def margin_s(settings: Settings) -> float:
    """How long past the visibility timeout a chunk may stay unaccounted for."""
    return max(10.0, min(120.0, settings.visibility_timeout / 4))


def period_s(settings: Settings) -> float:
    return max(2.0, min(30.0, settings.visibility_timeout / 4))


class Sweeper:
    """Finds lost chunks and sends them again with ``send``; :meth:`start` runs it in a
    daemon thread, :meth:`sweep` runs one pass (for tests and the thread)."""

    def __init__(self, settings: Settings, jobs: JobStore, storage: Storage,
                 send: Callable[[ChunkMessage], None], node: str) -> None:
        self.settings, self.jobs, self.storage = settings, jobs, storage
        self.send, self.node = send, node
        self._stopped = threading.Event()

    def start(self) -> Sweeper:
        threading.Thread(target=self._run, name="rstream-sweeper", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(period_s(self.settings)):
            try:
                self.sweep()
            except redis.RedisError as exc:  # Redis down: the next pass will look again
                logger.debug("sweep skipped: %s", exc)
            except Exception:
                logger.exception("sweep failed")

    def sweep(self) -> int:
        """One pass if this process gets the lock; returns how many chunks it sent again."""
        client = self.jobs.redis
        if not client.set(LOCK_KEY, self.node, nx=True, ex=int(period_s(self.settings) * 2)):
            return 0
        now = float(client.time()[0])
        cutoff = now - self.settings.visibility_timeout - margin_s(self.settings)
        # What is queued or held is read before what is done: a chunk acked in between is
        # then seen done, never as lost (complete() is recorded before the ack).
        held = held_task_ids(client)
        resent = 0
        for job in self.jobs.running_jobs():
            for chunk, generation in self.jobs.unfinished(job.id, sent_before=cutoff):
                if f"{job.id}:{chunk}:{generation}" not in held:
                    resent += self._send_again(job, chunk, generation, now - cutoff)
        return resent

    def _send_again(self, job: Job, chunk: int, generation: int, age_s: float) -> int:
        if generation == 0:
            uris: list[str] | None = InputRecord(self.storage, job.results, job.id).chunk(chunk)
        else:  # a retry chunk: the URIs whose lines are still errors
            uris = failed_uris(self.storage, job.results, job.id, chunk)
        if not uris:
            return 0
        message = ChunkMessage(job.id, chunk, uris, job.model, job.results, generation)
        self.jobs.mark_sent(job.id, chunk, generation, len(uris))
        self.send(message)
        logger.warning("job %s chunk %d: sent more than %.0f s ago and neither queued, running "
                       "nor done (a message lost with Redis?): sent again", job.id, chunk, age_s)
        return 1
