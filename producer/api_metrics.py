"""Queue and job metrics for Prometheus, gathered from Redis at each scrape (by the API, one
process, not by every worker): jobs by state, queue depth per queue, and the age of the
oldest chunk waiting in the infer queue."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from shared.celery_app import queued
from shared.constants import INFER_QUEUE, JOB_SENT_KEY, TRAIN_QUEUE
from shared.jobs import JobStore

RECENT_JOBS = 1000  # jobs counted by state (the newest)


def oldest_queued_age_s(store: JobStore, queue: str = INFER_QUEUE) -> float:
    """Seconds since the oldest chunk message waiting in ``queue`` was sent (0: none)."""
    raw = store.redis.lindex(queue, -1)  # kombu pushes on the left and pops on the right
    if raw is None:
        return 0.0
    try:
        job, chunk, generation = str(json.loads(raw)["headers"]["id"]).rsplit(":", 2)
    except (ValueError, KeyError, TypeError):
        return 0.0
    sent = store.redis.hget(JOB_SENT_KEY.format(job=job), f"{chunk}:{generation}")
    now = float(store.redis.time()[0])  # the clock the sent times were taken with
    return max(0.0, now - float(sent)) if sent else 0.0


def metrics_text(store: JobStore) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    registry = CollectorRegistry()
    jobs = Gauge("rstream_jobs", "Jobs by state (the newest 1,000).", ["state"],
                 registry=registry)
    for state in ("running", "done", "failed", "cancelled"):
        jobs.labels(state).set(0)
    for job in store.recent(RECENT_JOBS):
        jobs.labels("stalled" if job.stalled else job.status).inc()
    depth = Gauge("rstream_queue_chunks", "Messages waiting in each queue.", ["queue"],
                  registry=registry)
    for queue in (INFER_QUEUE, TRAIN_QUEUE):
        depth.labels(queue).set(queued(store.redis, queue))
    Gauge("rstream_queue_oldest_chunk_age_seconds",
          "Seconds since the oldest chunk waiting in the infer queue was sent.",
          registry=registry).set(oldest_queued_age_s(store))
    return generate_latest(registry), CONTENT_TYPE_LATEST
