"""The dead-letter list: task messages a worker refused, and ingest stream entries a watcher
refused (``producer/watch/stream.py``), each kept with the reason.

A message that cannot be decoded (not JSON, a body that is not base64, bytes where a task
expects arguments) or validated (a field out of range, a chunk its job never sent, an unknown
task, pickle) is removed from its queue and recorded here instead of being run, requeued, or
dropped with only a log line. ``rstream dead-letters`` lists them. The list keeps the newest
:data:`MAX_ENTRIES`; each entry keeps the first :data:`RAW_LIMIT` bytes of what was received.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from typing import Any

import redis

from rstream.shared.constants import DEAD_LETTERS_KEY

MAX_ENTRIES = 10_000
RAW_LIMIT = 64 * 1024


def record(client: redis.Redis, reason: str, *, queue: str | None = None,
           headers: Mapping[str, Any] | None = None, raw: bytes | str | None = None) -> None:
    """Keep one refused message with ``reason``; what it received is stored base64-encoded."""
    with client.pipeline(transaction=True) as pipe:
        stage(pipe, reason, queue=queue, headers=headers, raw=raw)
        pipe.execute()


def stage(pipe: redis.client.Pipeline, reason: str, *, queue: str | None = None,
          headers: Mapping[str, Any] | None = None, raw: bytes | str | None = None) -> None:
    """:func:`record`, queued on ``pipe`` (the watcher keeps a refused stream entry in the
    same transaction that acknowledges it)."""
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else (raw or b"")
    headers = dict(headers or {})
    entry = {
        "at": time.time(),
        "reason": reason[:2000],
        "queue": queue,
        "task": _short(headers.get("task")),
        "id": _short(headers.get("id")),
        "raw_bytes": len(data),
        "raw": base64.b64encode(data[:RAW_LIMIT]).decode("ascii"),
    }
    pipe.lpush(DEAD_LETTERS_KEY, json.dumps(entry))
    pipe.ltrim(DEAD_LETTERS_KEY, 0, MAX_ENTRIES - 1)


def recent(client: redis.Redis, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, newest first."""
    return [json.loads(raw) for raw in client.lrange(DEAD_LETTERS_KEY, 0, max(0, limit - 1))]


def count(client: redis.Redis) -> int:
    return int(client.llen(DEAD_LETTERS_KEY))


def clear(client: redis.Redis) -> int:
    """Drop every entry; returns how many there were."""
    with client.pipeline(transaction=True) as pipe:
        pipe.llen(DEAD_LETTERS_KEY)
        pipe.delete(DEAD_LETTERS_KEY)
        return int(pipe.execute()[0])


def _short(value: object) -> str | None:
    return None if value is None else str(value)[:200]
