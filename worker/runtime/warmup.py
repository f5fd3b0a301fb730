"""The warm-up of a worker's default model (``RSTREAM_MODEL``): loaded on a loop once the
worker is ready, again and again with backoff until it loads; ``/readyz`` reads its state."""

from __future__ import annotations

import logging
from collections.abc import Callable

from rstream.shared.loop import Loop

logger = logging.getLogger(__name__)

WARMUP_FIRST_RETRY_S = 1.0
WARMUP_MAX_RETRY_S = 60.0


class Warmup(Loop):
    """Loads ``ref`` at start, trying again with backoff until it loads, then stops."""

    def __init__(self, load: Callable[[str], object], ref: str) -> None:
        super().__init__("rstream-warmup", WARMUP_FIRST_RETRY_S, at_once=True)
        self.ref = ref
        self._load = load
        self._state = f"loading {ref}"
        self._loaded = False
        self._delay = WARMUP_FIRST_RETRY_S

    def status(self) -> tuple[bool, str]:
        """(loaded, what the model check says)."""
        return self._loaded, self._state

    def tick(self) -> float | None:
        try:
            loaded = self._load(self.ref)
        except Exception as exc:  # any reason a model cannot load; the next try may work
            state = f"cannot load {self.ref}: {type(exc).__name__}: {exc}"
            if state != self._state:
                logger.error("%s; trying again in %.0f s (and every %.0f s at most)",
                             state, self._delay, WARMUP_MAX_RETRY_S)
            self._state = state
            delay, self._delay = self._delay, min(WARMUP_MAX_RETRY_S, self._delay * 2)
            return delay
        # A compiled forward says what its warm-up cost; /readyz shows it.
        note = getattr(loaded, "warmup_note", None)
        self._state = f"loaded {self.ref}" + (f" ({note()})" if callable(note) else "")
        self._loaded = True
        self.stop()
        return None
