"""The Celery app of the worker: ``celery -A rstream.worker.app worker -Q infer --pool threads -c
N``.

The same app serves the trainer (``-Q train``) and beat (``celery -A rstream.worker.app beat``).

Settings are read and validated here, at worker start-up; torch and the model load lazily in
the worker process (on the first task, or in the background once the worker is ready when
``RSTREAM_MODEL`` names a default model).

Started by hand, a worker behaves as under ``rstream worker``: the thread pool (one model per
process) with ``RSTREAM_CONCURRENCY`` unless the command line says otherwise, and rstream's
own logging (``shared/logs.py``: ``RSTREAM_LOG_LEVEL``, ``RSTREAM_LOG_FORMAT``) installed
through Celery's signals, so Celery configures none of its own. Celery still prints its
banner (not in JSON mode) and, at a shutdown signal, one notice on stdout outside logging.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on the CPU they would otherwise steal cycles
# from the decode threads (bench/e2e.py measured rstream/bare 0.72-0.78 -> 0.82-0.83 on S3).
# Set before torch loads; a value from the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import ssl
from typing import Any

from celery.signals import celeryd_after_setup, celeryd_init, setup_logging

from rstream.shared import logs
from rstream.shared.connections import is_sentinel
from rstream.shared.queue.app import make_app
from rstream.shared.queue.beat import beat_schedule
from rstream.shared.settings import Settings
from rstream.worker.runtime import lifecycle
from rstream.worker.tasks import register

settings = Settings.from_env()
app = make_app(settings)
app.conf.beat_schedule = beat_schedule(settings)
app.conf.worker_pool = "threads"
app.conf.worker_concurrency = settings.concurrency
# A message that cannot be decoded or validated is dead-lettered, never allowed to end the
# process or to be dropped with only a log line (worker/runtime/intake.py).
app.conf.worker_consumer = "rstream.worker.runtime.intake:Consumer"
if is_sentinel(settings.redis_url):
    app.conf.broker_transport = "rstream.worker.runtime.intake:SentinelTransport"
elif settings.redis_url.startswith(("redis://", "rediss://")):
    app.conf.broker_transport = "rstream.worker.runtime.intake:Transport"
    if settings.redis_url.startswith("rediss://") and not app.conf.broker_use_ssl:
        # Naming the transport class bypasses kombu's own rediss:// default; verify certs.
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
state = register(app, settings)
lifecycle.connect(app, settings, state)


# celeryd_init comes before Celery's first words (a warning when it runs as root);
# setup_logging, answered, keeps Celery from installing handlers of its own.
@celeryd_init.connect(weak=False)
@setup_logging.connect(weak=False)
def _logging(**_: Any) -> None:
    logs.configure(settings.log_level, settings.log_format, force=True)


@celeryd_after_setup.connect(weak=False)
def _name_the_worker(sender: str, instance: Any, **_: Any) -> None:
    logs.set_context(worker=sender)
    if settings.log_format == "json":
        instance.quiet = True  # the banner is not JSON; the "ready" line says what it says
