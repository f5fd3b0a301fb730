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


def run_report(run: str, state: dict[str, Any]) -> str:
    """A run as ``rstream train status`` prints it: the outcome, one line per epoch, and the
    confusion matrix of the validation split with each class's accuracy."""
    lines = [f"run {run}: {state.get('status', 'unknown')}"]
    for key in ("name", "version", "parent", "reason", "val_accuracy", "production_accuracy",
                "best_epoch"):
        if state.get(key) is not None:
            lines.append(f"{key}: {state[key]}")
    history = state.get("history") or []
    if history:
        lines += ["", "epoch  train_loss  train_acc  select_loss  select_acc"]
        for row in history:
            mark = "  *" if row["epoch"] == state.get("best_epoch") else ""
            lines.append(f"{row['epoch']:>5}  {row['train_loss']:>10.4f}  "
                         f"{row['train_accuracy']:>9.4f}  {row['select_loss']:>11.4f}  "
                         f"{row['select_accuracy']:>10.4f}{mark}")
    lines += confusion_lines(state.get("classes") or [], state.get("confusion") or [],
                             state.get("production_per_class"))
    return "\n".join(lines)


def confusion_lines(classes: list[str], confusion: list[list[int]],
                    production: dict[str, dict[str, int]] | None = None) -> list[str]:
    """The confusion matrix as text: a row per true class, a column per predicted one, the
    row's accuracy (correct / images of that class), and the production version's accuracy
    on the same split where the run was gated against one."""
    if not classes or len(confusion) != len(classes):
        return []
    width = max(6, *(len(c) for c in classes))
    out = ["", "confusion (rows: true class, columns: predicted) on the validation split",
           " " * width + "".join(f"  {c:>{width}}" for c in classes) + "  accuracy"
           + ("  production" if production else "")]
    for i, (name, row) in enumerate(zip(classes, confusion, strict=True)):
        line = (f"{name:>{width}}" + "".join(f"  {n:>{width}}" for n in row)
                + f"  {_share(row[i], sum(row))}")
        if production:
            was = production.get(name, {})
            line += f"  {_share(was.get('correct', 0), was.get('count', 0))}"
        out.append(line)
    return out


def _share(correct: int, total: int) -> str:
    return f"{correct / total:.4f} ({correct}/{total})" if total else "-"
