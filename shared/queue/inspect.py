"""What the queues hold, read straight from kombu's Redis keys: how many chunk messages wait,
and which chunks are queued or held unacknowledged by a worker (so that nobody sends them
again)."""

from __future__ import annotations

import json

import redis

from rstream.shared.constants import INFER_QUEUE

# kombu's Redis transport keeps the messages delivered and not acknowledged yet in this hash.
UNACKED_KEY = "unacked"


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that kombu keeps a queue in (one per priority step)."""
    return [queue] + [f"{queue}\x06\x16{step}" for step in (3, 6, 9)]


def queued(client: redis.Redis, queue: str) -> int:
    """Messages waiting in ``queue`` (not counting those being worked on)."""
    with client.pipeline(transaction=False) as pipe:
        for key in queue_keys(queue):
            pipe.llen(key)
        return sum(pipe.execute())


def held_task_ids(client: redis.Redis) -> set[str]:
    """The task ids of every message in the infer queue or held unacknowledged by a worker
    (kombu's ``unacked`` hash): chunks that need no sending again."""
    ids: set[str] = set()
    for key in queue_keys(INFER_QUEUE):
        ids.update(_task_id(raw) for raw in client.lrange(key, 0, -1))
    ids.update(_task_id(raw, held=True) for raw in client.hvals(UNACKED_KEY))
    return ids


def _task_id(raw: bytes, *, held: bool = False) -> str:
    """The task id in a queued envelope, or in an unacked entry: [envelope, exchange, key]."""
    try:
        envelope = json.loads(raw)
        return str((envelope[0] if held else envelope)["headers"]["id"])
    except (ValueError, KeyError, TypeError, IndexError):
        return ""
