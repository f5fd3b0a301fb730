"""The API's ``/metrics``: what ``rstream exporter`` exports of the queues
(``shared/queue/metrics.py``: depth per queue, the age of the chunk next in line, unacked
messages, live workers, dead letters), and jobs by state. Gathered from Redis at each scrape,
by this one process."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from rstream.shared.jobs.store import JobStore
from rstream.shared.queue.metrics import QueueCollector

RECENT_JOBS = 1000  # jobs counted by state (the newest)
STATES = ("running", "stalled", "done", "failed", "cancelled")


class JobStates(Collector):
    """``rstream_jobs{state}``: the newest jobs by state."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys(STATES, 0)
        for job in self.store.recent(RECENT_JOBS):
            state = "stalled" if job.stalled else job.status
            counts[state] = counts.get(state, 0) + 1
        family = GaugeMetricFamily("rstream_jobs", f"Jobs by state (the newest {RECENT_JOBS}).",
                                   labels=["state"])
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family


def registry_for(store: JobStore) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(QueueCollector(store.redis))
    registry.register(JobStates(store))
    return registry


def metrics_text(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
