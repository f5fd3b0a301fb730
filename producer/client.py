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


class Client:
    """What the producer needs: settings, storage, the job store, a Celery app and the chunk
    sender on it.

    Building one pings Redis once (a few seconds at most), so a wrong or unreachable
    ``RSTREAM_REDIS_URL`` is one clear error instead of a long wait and a traceback;
    ``check=False`` (a long-running server) skips that.
    """

    def __init__(self, settings: Settings, app: Celery | None = None, *,
                 check: bool = True) -> None:
        if check:
            check_redis(settings.redis_url)
        self.settings = settings
        self.storage = Storage(settings)
        self.jobs = JobStore.from_url(settings.redis_url, settings.job_ttl)
        self.app = app or make_app(settings)
        self.sender = ChunkSender(self.jobs, self.app)
