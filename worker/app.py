"""The Celery app of the worker: ``celery -A worker.app worker -Q infer --pool threads -c N``.

The same app serves the trainer (``-Q train``) and beat (``celery -A worker.app beat``).

Settings are read and validated here, at worker start-up; torch and the model load lazily in
the worker process on the first task.
"""

from __future__ import annotations

from shared.celery_app import beat_schedule, make_app
from shared.settings import Settings
from worker.tasks import register

settings = Settings.from_env()
app = make_app(settings)
app.conf.beat_schedule = beat_schedule(settings)
state = register(app, settings)
