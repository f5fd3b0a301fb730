"""What a worker process's ``/healthz`` and ``/readyz`` answer (on its metrics port).

- ``/healthz``, alive: the model thread (the batcher) makes progress or is idle. It turns red
  when that thread died, has spent more than ``RSTREAM_WEDGE_TIMEOUT`` seconds on one batch,
  or has left images waiting that long; restarting the process is then the fix. A process
  that has scored nothing yet has no model thread and is alive. A broker outage does not turn
  it red: a restart would not bring Redis back.
- ``/readyz``, ready for chunks: the worker consumes (from Celery's ``worker_ready`` until its
  shutdown begins), the broker answers a PING, and the default model (``RSTREAM_MODEL``) is
  loaded. An infer worker loads it in the background once it is ready (:class:`Warmup`),
  again and again with backoff until it loads. Without a default model, each job's model
  loads on its first chunk and this check passes.

Each answers 200 or 503 with a JSON object that says why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from shared.connections import check_redis
from shared.constants import INFER_QUEUE
from shared.errors import ConfigError
from shared.settings import Settings
from worker.batcher import Batcher

logger = logging.getLogger(__name__)

BROKER_CHECK_TIMEOUT_S = 2.0
WARMUP_FIRST_RETRY_S = 1.0
WARMUP_MAX_RETRY_S = 60.0


class Warmup:
    """Loads the default model on a background thread at start, trying again until it loads."""

    def __init__(self, load: Callable[[str], object], ref: str) -> None:
        self.ref = ref
        self._load = load
        self._state = f"loading {ref}"
        self._loaded = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rstream-warmup", daemon=True)

    def start(self) -> Warmup:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def status(self) -> tuple[bool, str]:
        """(loaded, what the model check says)."""
        return self._loaded, self._state

    def _run(self) -> None:
        delay = WARMUP_FIRST_RETRY_S
        while not self._stopped.is_set():
            try:
                self._load(self.ref)
            except Exception as exc:  # any reason a model cannot load; the next try may work
                state = f"cannot load {self.ref}: {type(exc).__name__}: {exc}"
                if state != self._state:
                    logger.error("%s; trying again in %.0f s (and every %.0f s at most)",
                                 state, delay, WARMUP_MAX_RETRY_S)
                self._state = state
                self._stopped.wait(delay)
                delay = min(WARMUP_MAX_RETRY_S, delay * 2)
                continue
            self._state, self._loaded = f"loaded {self.ref}", True
            return


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
