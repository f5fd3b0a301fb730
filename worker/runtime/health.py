"""What a worker process's ``/healthz`` and ``/readyz`` answer (on its metrics port).

- ``/healthz``, alive: the model thread (the batcher) makes progress or is idle. It turns red
  when that thread died, has spent more than ``RSTREAM_WEDGE_TIMEOUT`` seconds on one batch,
  or has left images waiting that long; restarting the process is then the fix. A process
  that has scored nothing yet has no model thread and is alive. A broker outage does not turn
  it red: a restart would not bring Redis back.
- ``/readyz``, ready for chunks: the worker consumes (from Celery's ``worker_ready`` until its
  shutdown begins), the broker answers a PING, and the default model (``RSTREAM_MODEL``) is
  loaded. An infer worker loads it in the background once it is ready (``warmup.py``),
  again and again with backoff until it loads. Without a default model, each job's model
  loads on its first chunk and this check passes.

Each answers 200 or 503 with a JSON object that says why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rstream.shared.connections import check_redis
from rstream.shared.constants import INFER_QUEUE
from rstream.shared.errors import ConfigError
from rstream.shared.settings import Settings
from rstream.worker.runtime.warmup import Warmup
from rstream.worker.serving.batcher import Batcher

logger = logging.getLogger(__name__)

BROKER_CHECK_TIMEOUT_S = 2.0


class Health:
    """The probes of one worker process; :meth:`liveness` and :meth:`readiness` return
    (ok, details)."""

    def __init__(self, settings: Settings, batcher: Callable[[], Batcher | None]) -> None:
        self.settings = settings
        self._batcher = batcher
        self._queues: list[str] = []
        self._warmup: Warmup | None = None
        self._consuming = threading.Event()

    def started(self, queues: Sequence[str], warmup: Warmup | None) -> None:
        """The worker consumes ``queues`` now; ``warmup`` loads its default model, if any."""
        self._queues, self._warmup = list(queues), warmup
        self._consuming.set()

    def stopping(self) -> None:
        """The worker's shutdown began: it takes no more chunks."""
        self._consuming.clear()

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        batcher = self._batcher()
        if batcher is None:
            return True, {"model_thread": "not started (no chunk scored yet)"}
        return batcher.liveness(self.settings.wedge_timeout)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        consuming = self._consuming.is_set()
        broker_ok, broker = self._broker()
        model_ok, model = self._model()
        details = {"consumer": "consuming" if consuming else "not consuming (starting or "
                   "shutting down)", "broker": broker, "model": model}
        return consuming and broker_ok and model_ok, details

    def _broker(self) -> tuple[bool, str]:
        try:
            check_redis(self.settings.redis_url, BROKER_CHECK_TIMEOUT_S)
        except ConfigError as exc:  # the message masks the password
            return False, str(exc)
        return True, "connected"

    def _model(self) -> tuple[bool, str]:
        if INFER_QUEUE not in self._queues:
            return True, f"not serving (queues {', '.join(self._queues) or 'none yet'})"
        if self._warmup is None:
            return True, ("no default model (RSTREAM_MODEL is empty): each job's model loads "
                          "on its first chunk")
        return self._warmup.status()
