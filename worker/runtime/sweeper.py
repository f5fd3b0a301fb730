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

import functools
import logging

import redis

from rstream.shared.constants import REDIS_PREFIX
from rstream.shared.jobs.resend import Unfinished, resend_unfinished
from rstream.shared.jobs.sender import ChunkSender
from rstream.shared.jobs.store import Job, JobStore
from rstream.shared.loop import Loop
from rstream.shared.queue.inspect import held_task_ids
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage

logger = logging.getLogger(__name__)

LOCK_KEY = REDIS_PREFIX + ":lock:sweeper"


def margin_s(settings: Settings) -> float:
    """How long past the visibility timeout a chunk may stay unaccounted for."""
    return max(10.0, min(120.0, settings.visibility_timeout / 4))


def period_s(settings: Settings) -> float:
    return max(2.0, min(30.0, settings.visibility_timeout / 4))


class Sweeper(Loop):
    """Finds lost chunks and sends them again with ``sender``, every :func:`period_s`;
    :meth:`sweep` runs one pass (for tests and the loop)."""

    def __init__(self, settings: Settings, jobs: JobStore, storage: Storage,
                 sender: ChunkSender, node: str) -> None:
        super().__init__("rstream-sweeper", period_s(settings))
        self.settings, self.jobs, self.storage = settings, jobs, storage
        self.sender, self.node = sender, node

    def tick(self) -> None:
        try:
            self.sweep()
        except redis.RedisError as exc:  # Redis down: the next pass will look again
            logger.debug("sweep skipped: %s", exc)

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
            send = functools.partial(self._send_again, job, age_s=now - cutoff)
            resent += resend_unfinished(self.storage, self.jobs, job, send, held=held,
                                        sent_before=cutoff)
        return resent

    def _send_again(self, job: Job, item: Unfinished, *, age_s: float) -> None:
        self.sender.send(job, item.chunk, item.uris, item.generation, item.columns)
        logger.warning("job %s chunk %d: sent more than %.0f s ago and neither queued, running "
                       "nor done (a message lost with Redis?): sent again", job.id, item.chunk,
                       age_s)
