"""Fine-tune runs in Redis: the single-flight lock, progress, and the outcome of each run.

No torch here: ``rstream train --wait`` follows a run from a host without it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from redis.lock import Lock

from rstream.shared.constants import TRAIN_LOCK_KEY, TRAIN_RUN_KEY

RUN_TTL_S = 7 * 24 * 3600
FINISHED = ("promoted", "trained", "skipped", "locked", "failed")


class TrainingLock:
    """One fine-tune per model name at a time; the lock expires when its holder stops beating.

    A crashed trainer therefore blocks the next one for at most ``ttl`` seconds. The holder
    calls :meth:`beat` as it makes progress, which pushes the expiry out again.
    """

    def __init__(self, client: redis.Redis, name: str, ttl: int) -> None:
        self.ttl = ttl
        self.key = TRAIN_LOCK_KEY.format(name=name)
        self._lock = Lock(client, self.key, timeout=ttl, blocking=False)
        self._client = client
        self._last_beat = 0.0

    def acquire(self) -> bool:
        acquired = bool(self._lock.acquire(blocking=False))
        self._last_beat = time.monotonic()
        return acquired

    def expires_in(self) -> float:
        """Seconds until the current holder's lock expires (-2: nobody holds it)."""
        return float(self._client.pttl(self.key)) / 1000.0

    def beat(self, every_s: float = 5.0) -> None:
        """Extend the expiry to a full ``ttl`` again (at most every ``every_s`` seconds)."""
        if time.monotonic() - self._last_beat >= every_s:
            self._lock.reacquire()
            self._last_beat = time.monotonic()

    def release(self) -> None:
        if self._lock.owned():
            self._lock.release()


class TrainRuns:
    """The state of each fine-tune run, keyed by its run id (the Celery task id)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def update(self, run: str, **fields: Any) -> None:
        key = TRAIN_RUN_KEY.format(run=run)
        encoded: dict[str | bytes, str] = {k: json.dumps(v) for k, v in fields.items()}
        encoded["updated_at"] = json.dumps(time.time())
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=encoded)
            pipe.expire(key, RUN_TTL_S)
            pipe.execute()

    def get(self, run: str) -> dict[str, Any]:
        raw = self.redis.hgetall(TRAIN_RUN_KEY.format(run=run))
        return {k.decode(): json.loads(v) for k, v in raw.items()}
