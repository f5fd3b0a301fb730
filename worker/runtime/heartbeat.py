"""This worker process's heartbeat in Redis (``shared/queue/heartbeats.py``), on a loop."""

from __future__ import annotations

import logging
import os
from typing import Any

import redis

from rstream.shared.loop import Loop
from rstream.shared.queue import heartbeats

logger = logging.getLogger(__name__)


class WorkerHeartbeat(Loop):
    """Beats at once, then every ``heartbeats.BEAT_S`` seconds until :meth:`stop`, which
    removes it at once."""

    def __init__(self, client: redis.Redis, node: str, queues: list[str], **info: Any) -> None:
        super().__init__("rstream-heartbeat", heartbeats.BEAT_S, at_once=True)
        self.client, self.node, self.queues = client, node, queues
        self.info = {"pid": os.getpid(), **info}
        self._failing = False

    def tick(self) -> None:
        try:
            heartbeats.beat(self.client, self.node, self.queues, **self.info)
        except redis.RedisError as exc:  # Redis is down: the worker says so once
            if not self._failing:
                logger.warning("cannot send the worker heartbeat (%s); retrying", exc)
            self._failing = True
            return
        self._failing = False

    def stop(self) -> None:
        super().stop()
        try:
            heartbeats.gone(self.client, self.node)
        except redis.RedisError:
            pass  # it expires by itself
