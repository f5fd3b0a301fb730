"""The beat schedule: the scheduled fine-tune, read from the settings."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from rstream.shared.constants import FINETUNE_TASK, TRAIN_QUEUE
from rstream.shared.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """The scheduled fine-tune: ``settings.train_schedule`` (cron, UTC) on the train queue."""
    minute, hour, day, month, weekday = settings.train_schedule.split(" ")
    return {
        "finetune": {
            "task": FINETUNE_TASK,
            "schedule": crontab(minute=minute, hour=hour, day_of_month=day,
                                month_of_year=month, day_of_week=weekday),
            "kwargs": {"name": settings.train_model},
            "options": {"queue": TRAIN_QUEUE},
        }
    }
