"""What the queues hold, as Prometheus metrics: gathered from Redis by ONE process.

Every worker could count the queues, but N workers would export N copies of the same numbers
(and sum to N times the truth). ``rstream exporter`` (``producer/exporter.py``) serves them;
anything else that wants them (an HTTP API) registers :class:`QueueCollector` the same way.
No torch here: this runs on a submit-only host.

- ``rstream_queue_depth{queue}``: messages waiting in each queue;
- ``rstream_queue_oldest_age_seconds{queue="infer"}``: how long ago the chunk next in line
  was sent (0 when the queue is empty). The producer and the sweeper note each send in the
  job record in Redis's own clock (``shared/jobs/store.py``), and the message names its chunk in
  its task id, so no clock of another machine is involved;
- ``rstream_queue_unacked_messages``: messages delivered to workers and not acknowledged yet;
- ``rstream_workers{queue}``: worker processes alive (by their heartbeat) per queue;
- ``rstream_dead_letters``: refused messages kept in the dead-letter list;
- ``rstream_redis_up``: 1 when Redis answered this scrape, 0 when not (then nothing else).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from rstream.shared.constants import DEAD_LETTERS_KEY, INFER_QUEUE, JOB_SENT_KEY, TRAIN_QUEUE
from rstream.shared.queue import heartbeats
from rstream.shared.queue.inspect import UNACKED_KEY, queue_keys, queued
from rstream.shared.queue.messages import ChunkMessage

logger = logging.getLogger(__name__)

QUEUES = (INFER_QUEUE, TRAIN_QUEUE)


@dataclass
class QueueSnapshot:
    """The queues at one moment."""

    depth: dict[str, int] = field(default_factory=dict)
    oldest_age_s: dict[str, float] = field(default_factory=dict)  # chunk queues only
    unacked: int = 0
    workers: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0


def gather(client: redis.Redis, queues: Sequence[str] = QUEUES) -> QueueSnapshot:
    """Read the queues; redis.RedisError when Redis does not answer."""
    snapshot = QueueSnapshot()
    for queue in queues:
        snapshot.depth[queue] = queued(client, queue)
    snapshot.oldest_age_s[INFER_QUEUE] = oldest_chunk_age(client, INFER_QUEUE)
    snapshot.unacked = int(client.hlen(UNACKED_KEY))
    alive = Counter(queue for worker in heartbeats.alive(client)
                    for queue in worker.get("queues", ()))
    snapshot.workers = {queue: alive.get(queue, 0) for queue in sorted({*queues, *alive})}
    snapshot.dead_letters = int(client.llen(DEAD_LETTERS_KEY))
    return snapshot


def oldest_chunk_age(client: redis.Redis, queue: str) -> float:
    """Seconds since the chunk next in line in ``queue`` was sent; 0 when none waits.

    kombu pushes on the left and pops on the right, so the oldest message of each priority
    list is its last element. A message that names no chunk of a known job is not counted.
    """
    now_s, now_us = client.time()
    ages = [0.0]
    for key in queue_keys(queue):
        raw = client.lindex(key, -1)
        sent = _sent_at(client, raw) if raw is not None else None
        if sent is not None:
            ages.append(max(0.0, now_s + now_us / 1e6 - sent))
    return max(ages)


def _sent_at(client: redis.Redis, raw: bytes | str) -> float | None:
    """When the chunk of a queued message was sent (Redis time), from its job record."""
    try:
        headers = json.loads(raw).get("headers") or {}
    except (ValueError, AttributeError):  # not a kombu envelope: a worker will dead-letter it
        return None
    parsed = ChunkMessage.parse_task_id(headers.get("id") if isinstance(headers, dict) else None)
    if parsed is None:
        return None
    job, chunk, generation = parsed
    sent = client.hget(JOB_SENT_KEY.format(job=job), f"{chunk}:{generation}")
    return float(sent) if sent is not None else None


class QueueCollector(Collector):
    """A Prometheus collector that gathers a :class:`QueueSnapshot` at each scrape."""

    def __init__(self, client: redis.Redis, queues: Sequence[str] = QUEUES) -> None:
        self.client = client
        self.queues = tuple(queues)
        self._failing = False

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no scrape of Redis when the collector is registered

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("rstream_redis_up", "1 when Redis answered this scrape.")
        try:
            snapshot = gather(self.client, self.queues)
        except redis.RedisError as exc:
            if not self._failing:
                logger.warning("cannot read the queues from Redis (%s); retrying at each scrape",
                               exc)
            self._failing = True
            up.add_metric([], 0)
            yield up
            return
        if self._failing:
            logger.info("Redis answers again")
        self._failing = False
        up.add_metric([], 1)
        yield up
        yield from families(snapshot)


def families(snapshot: QueueSnapshot) -> Iterator[Metric]:
    """The snapshot as Prometheus metric families."""
    depth = GaugeMetricFamily("rstream_queue_depth", "Messages waiting in the queue.",
                              labels=["queue"])
    for queue, value in snapshot.depth.items():
        depth.add_metric([queue], value)
    yield depth
    age = GaugeMetricFamily("rstream_queue_oldest_age_seconds",
                            "Seconds since the chunk next in line was sent (0: none waits).",
                            labels=["queue"])
    for queue, seconds in snapshot.oldest_age_s.items():
        age.add_metric([queue], seconds)
    yield age
    yield GaugeMetricFamily("rstream_queue_unacked_messages",
                            "Messages delivered to workers and not acknowledged yet.",
                            value=snapshot.unacked)
    alive = GaugeMetricFamily("rstream_workers", "Worker processes alive (heartbeat), by queue.",
                              labels=["queue"])
    for queue, value in snapshot.workers.items():
        alive.add_metric([queue], value)
    yield alive
    yield GaugeMetricFamily("rstream_dead_letters", "Refused messages in the dead-letter list.",
                            value=snapshot.dead_letters)
