"""Worker heartbeats in Redis: which worker processes are alive, and which queues they serve.

Each worker process writes its heartbeat every :data:`BEAT_S` seconds with an expiry of
:data:`TTL_S`, so a worker that stops or dies drops out within seconds. ``rstream wait`` and
``status`` use it to say at once when nothing consumes a job's queue, instead of showing
``0/300`` forever.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from rstream.shared.constants import REDIS_PREFIX, WORKER_KEY

BEAT_S = 3.0
TTL_S = 10


def beat(client: redis.Redis, node: str, queues: list[str], **info: Any) -> None:
    """Say that worker ``node`` is alive and consumes ``queues``."""
    record = {"node": node, "queues": sorted(queues), "at": time.time(), **info}
    client.set(WORKER_KEY.format(node=node), json.dumps(record), ex=TTL_S)


def gone(client: redis.Redis, node: str) -> None:
    """Worker ``node`` stopped (a clean shutdown: it need not wait for the expiry)."""
    client.delete(WORKER_KEY.format(node=node))


def alive(client: redis.Redis) -> list[dict[str, Any]]:
    """The heartbeats of the workers alive now, by node name."""
    keys = sorted(client.scan_iter(match=WORKER_KEY.format(node="*"), count=500))
    records = [json.loads(raw) for raw in client.mget(keys) if raw] if keys else []
    return sorted(records, key=lambda record: str(record.get("node")))


def absence(client: redis.Redis, queue: str) -> str | None:
    """Why nothing will process ``queue`` (no worker, or workers on other queues); None when a
    live worker consumes it."""
    workers = alive(client)
    if any(queue in worker.get("queues", ()) for worker in workers):
        return None
    if not workers:
        return (f"no worker is running (none has sent a heartbeat to {REDIS_PREFIX} in "
                f"{TTL_S} s): start one with `rstream worker`")
    others = sorted({q for worker in workers for q in worker.get("queues", ())})
    return (f"no worker consumes the {queue!r} queue: the {len(workers)} worker(s) alive serve "
            f"{', '.join(repr(q) for q in others)}: start one with `rstream worker`")
