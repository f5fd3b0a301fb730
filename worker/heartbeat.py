"""This worker process's heartbeat in Redis (``shared/workers.py``), on a daemon thread."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import redis

from shared import workers

logger = logging.getLogger(__name__)


class Heartbeat:
    """Beats every ``workers.BEAT_S`` seconds until :meth:`stop`, which removes it at once."""

    def __init__(self, client: redis.Redis, node: str, queues: list[str], **info: Any) -> None:
        self.client, self.node, self.queues = client, node, queues
        self.info = {"pid": os.getpid(), **info}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rstream-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        try:
            workers.gone(self.client, self.node)
        except redis.RedisError:
            pass  # it expires by itself

    def _run(self) -> None:
        failing = False
        while not self._stopped.is_set():
            try:
                workers.beat(self.client, self.node, self.queues, **self.info)
                failing = False
            except redis.RedisError as exc:  # Redis is down: the worker says so once
                if not failing:
                    logger.warning("cannot send the worker heartbeat (%s); retrying", exc)
                failing = True
            self._stopped.wait(workers.BEAT_S)
