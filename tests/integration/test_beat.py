"""Beat sends the fine-tune at the configured time: the clock is driven, not waited for."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import redis
from celery.beat import Scheduler

from rstream.shared.constants import FINETUNE_TASK, TRAIN_QUEUE
from rstream.shared.queue.app import make_app
from rstream.shared.queue.beat import beat_schedule
from tests.settings import make_settings


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_beat_sends_finetune_to_the_train_queue_at_the_scheduled_minute(
        redis_server: str, tmp_path: Path) -> None:
    url = redis_server.rsplit("/", 1)[0] + "/6"
    settings = make_settings(redis_url=url, train_schedule="30 2 * * *", train_model="digits",
                             storage_root=str(tmp_path))
    client = redis.Redis.from_url(url)
    client.flushdb()
    app = make_app(settings)
    clock = Clock(datetime(2026, 11, 27, 2, 29, 0, tzinfo=UTC))
    app.now = clock  # type: ignore[method-assign]  # beat asks the app for the time
    app.conf.beat_schedule = beat_schedule(settings)
    scheduler = Scheduler(app, lazy=True)
    scheduler.setup_schedule()
    entry = scheduler.schedule["finetune"]
    entry.last_run_at = datetime(2026, 11, 27, 2, 28, 0, tzinfo=UTC)  # beat started at 02:28
    entry.schedule.nowfun = clock

    scheduler.tick()
    assert client.llen(TRAIN_QUEUE) == 0, "02:29 is not the scheduled minute"

    clock.now = datetime(2026, 11, 27, 2, 30, 5, tzinfo=UTC)
    scheduler.tick()
    assert client.llen(TRAIN_QUEUE) == 1
    message = json.loads(client.lindex(TRAIN_QUEUE, 0))
    assert message["headers"]["task"] == FINETUNE_TASK
    assert message["content-type"] == "application/json"
    assert json.loads(base64.b64decode(message["body"]))[1] == {"name": "digits"}

    clock.now = datetime(2026, 11, 27, 2, 31, 0, tzinfo=UTC)
    scheduler.tick()
    assert client.llen(TRAIN_QUEUE) == 1, "once a day, not once a tick"
