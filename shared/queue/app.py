"""The Celery app factory: the producer and the worker build their app from the same settings."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from rstream.shared.connections import broker
from rstream.shared.constants import FINETUNE_TASK, INFER_QUEUE, INFER_TASK, TRAIN_QUEUE
from rstream.shared.settings import Settings


def make_app(settings: Settings, name: str = "rstream") -> Celery:
    """A Celery app on ``settings.redis_url`` with rstream's delivery guarantees.

    JSON only (a pickle message is refused, never executed); late acks with reject on worker
    loss, so a chunk whose worker dies goes back to the queue; prefetch of one, so a busy
    worker does not hoard chunks; a visibility timeout longer than the task time limit (the
    settings refuse anything else), so Redis does not redeliver a chunk that is still running.
    """
    target = broker(settings.redis_url)  # a Sentinel URL becomes kombu's sentinel:// form
    app = Celery(name, broker=target.url, set_as_current=False)
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
            **target.transport_options,
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
    if target.use_ssl is not None:
        app.conf.broker_use_ssl = target.use_ssl
    return app


def unacked_mutex_expire(settings: Settings) -> int:
    """Seconds the restore lock lives: long enough for one restore pass (a few Redis calls),
    short enough that a worker killed while holding it delays redelivery by little."""
    return max(5, min(30, settings.visibility_timeout // 4))

