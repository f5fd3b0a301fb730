"""The Celery app factory: the producer and the worker build their app from the same settings."""

from __future__ import annotations

import json
from typing import Any

import redis
from celery import Celery
from celery.schedules import crontab
from kombu import Queue

from shared.constants import FINETUNE_TASK, INFER_QUEUE, INFER_TASK, TRAIN_QUEUE
from shared.messages import ChunkMessage
from shared.settings import Settings


def make_app(settings: Settings, name: str = "rstream") -> Celery:
    """A Celery app on ``settings.redis_url`` with rstream's delivery guarantees.

    JSON only (a pickle message is refused, never executed); late acks with reject on worker
    loss, so a chunk whose worker dies goes back to the queue; prefetch of one, so a busy
    worker does not hoard chunks; a visibility timeout longer than the task time limit (the
    settings refuse anything else), so Redis does not redeliver a chunk that is still running.
    """
    app = Celery(name, broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(1, settings.task_time_limit - 10),
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for chunks of dead workers every few seconds (kombu's default scans about
            # every 100 s), so a redelivery follows the visibility timeout closely.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
            # The lock one worker holds while it restores; kombu's default of 300 s outlives a
            # worker killed while holding it, and no chunk came back for 5 minutes.
            "unacked_mutex_expire": unacked_mutex_expire(settings),
            # A Redis that vanishes without closing the socket must not hang a publish.
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
        },
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_default_queue=INFER_QUEUE,
        task_queues=(Queue(INFER_QUEUE), Queue(TRAIN_QUEUE)),
        task_routes={INFER_TASK: {"queue": INFER_QUEUE}, FINETUNE_TASK: {"queue": TRAIN_QUEUE}},
        worker_hijack_root_logger=True,
        # Task events, so that Flower (and `celery events`) show the chunks as they are sent,
        # received, started and finished, without enabling them by remote control.
        worker_send_task_events=True,
        task_send_sent_event=True,
        enable_utc=True,
        timezone="UTC",
    )
    return app


UNACKED_KEY = "unacked"  # kombu's hash of the messages workers hold


def send_chunk(app: Celery, message: ChunkMessage) -> None:
    """Send one chunk task; its id comes from (job, chunk, generation), so a chunk sent again
    is the same task."""
    app.send_task(INFER_TASK, kwargs={"message": message.to_dict()}, queue=INFER_QUEUE,
                  task_id=message.task_id)


def unacked_mutex_expire(settings: Settings) -> int:
    """Seconds the restore lock lives: long enough for one restore pass (a few Redis calls),
    short enough that a worker killed while holding it delays redelivery by little."""
    return max(5, min(30, settings.visibility_timeout // 4))


# kombu's Redis transport keeps the messages delivered and not acknowledged yet in this hash.
UNACKED_KEY = "unacked"


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that kombu keeps a queue in (one per priority step)."""
    return [queue] + [f"{queue}\x06\x16{step}" for step in (3, 6, 9)]


def queued(client: redis.Redis, queue: str) -> int:
    """Messages waiting in ``queue`` (not counting those being worked on)."""
    with client.pipeline(transaction=False) as pipe:
        for key in queue_keys(queue):
            pipe.llen(key)
        return sum(pipe.execute())


def held_task_ids(client: redis.Redis) -> set[str]:
    """The task ids of every message in the infer queue or held unacknowledged by a worker
    (kombu's ``unacked`` hash): chunks that need no sending again."""
    ids: set[str] = set()
    for key in queue_keys(INFER_QUEUE):
        ids.update(_task_id(raw) for raw in client.lrange(key, 0, -1))
    ids.update(_task_id(raw, held=True) for raw in client.hvals(UNACKED_KEY))
    return ids


def _task_id(raw: bytes, *, held: bool = False) -> str:
    """The task id in a queued envelope, or in an unacked entry: [envelope, exchange, key]."""
    try:
        envelope = json.loads(raw)
        return str((envelope[0] if held else envelope)["headers"]["id"])
    except (ValueError, KeyError, TypeError, IndexError):
        return ""


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
