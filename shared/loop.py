"""A background loop: a daemon thread that does one thing every N seconds until stopped.

The heartbeats, the lock renewal of a watcher, the sweeper, the check of the production
pointer, the lag report and the model warm-up are each a :class:`Loop` with its own
:meth:`Loop.tick`.
"""

from __future__ import annotations

import logging
import threading
from typing import Self

logger = logging.getLogger(__name__)


class Loop:
    """Calls :meth:`tick` every ``interval_s`` seconds on a daemon thread named ``name``.

    ``at_once``: the first tick runs at :meth:`start`, not one interval later. ``stop``: an
    event shared with an owner that stops more than this loop (a watcher). A tick may return
    the seconds to wait before the next one (a backoff); ``None`` waits ``interval_s``. A tick
    that raises is logged with its traceback and the loop goes on: a tick handles the errors
    it expects (Redis away) itself.
    """

    def __init__(self, name: str, interval_s: float, *, at_once: bool = False,
                 stop: threading.Event | None = None) -> None:
        self.name, self.interval_s, self.at_once = name, interval_s, at_once
        self._stop = stop if stop is not None else threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def tick(self) -> float | None:
        """One pass; the seconds until the next one, or None for ``interval_s``."""
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """No tick starts after this; one that runs now finishes."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        delay = 0.0 if self.at_once else self.interval_s
        while not self._stop.wait(delay):
            try:
                wait = self.tick()
            except Exception:
                logger.exception("%s: a pass failed; the next one goes on", self.name)
                wait = None
            delay = self.interval_s if wait is None else wait
