"""The connection bundle of the submission side: settings, storage, the job store and a Celery
app, built once per command or server and passed to submit, monitor, training and watch."""

from __future__ import annotations

from celery import Celery

from rstream.shared.connections import check_redis
from rstream.shared.jobs.sender import ChunkSender
from rstream.shared.jobs.store import JobStore
from rstream.shared.queue.app import make_app
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage

FAIL_FAST_S = 0.5  # a Redis call of a server: one attempt, connected within this


class Client:
    """What the producer needs: settings, storage, the job store, a Celery app and the chunk
    sender on it.

    Building one pings Redis once (a few seconds at most), so a wrong or unreachable
    ``RSTREAM_REDIS_URL`` is one clear error instead of a long wait and a traceback;
    ``check=False`` (a long-running server) skips that, and ``fail_fast`` makes every Redis
    call one short attempt, so a server answers during an outage instead of waiting.
    """

    def __init__(self, settings: Settings, app: Celery | None = None, *,
                 check: bool = True, fail_fast: bool = False) -> None:
        if check:
            check_redis(settings.redis_url)
        self.settings = settings
        self.storage = Storage(settings)
        # A command rides out a Redis restart; a server (fail_fast) answers 503 at once.
        self.jobs = JobStore.from_url(settings.redis_url, settings.job_ttl,
                                      ride_out_s=0 if fail_fast else 30,
                                      connect_timeout_s=FAIL_FAST_S if fail_fast else 5)
        self.app = app or make_app(settings)
        self.sender = ChunkSender(self.jobs, self.app)
