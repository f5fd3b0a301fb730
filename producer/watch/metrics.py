"""Prometheus metrics of a watcher, served on ``RSTREAM_METRICS_HOST`` when ``rstream watch
--metrics-port`` asks. Without a port every method does nothing.

- ``rstream_watch_lag_seconds``: age of the oldest object seen but not scored yet (0: none);
- ``rstream_watch_chunks_waiting``: chunks sent and not scored yet;
- ``rstream_watch_objects_total``: objects recorded and sent (its rate: objects per second);
- ``rstream_watch_windows_open``: window jobs not closed yet.
"""

from __future__ import annotations

import logging
from typing import Any

import prometheus_client as prom

from rstream.shared.errors import ConfigError

logger = logging.getLogger(__name__)


class WatchMetrics:
    """The metrics of watch ``name``, on ``port`` (None or 0: none)."""

    def __init__(self, name: str, port: int | None, host: str = "127.0.0.1") -> None:
        self.name = name
        self._gauges: dict[str, Any] = {}
        self._objects: Any = None
        if not port:
            return
        registry = prom.CollectorRegistry()
        labels = ["watch"]
        self._objects = prom.Counter("rstream_watch_objects_total",
                                     "Objects recorded and sent by the watcher.", labels,
                                     registry=registry).labels(name)
        for metric, text in (
                ("rstream_watch_lag_seconds", "Age of the oldest object seen but not scored."),
                ("rstream_watch_chunks_waiting", "Chunks sent and not scored yet."),
                ("rstream_watch_windows_open", "Window jobs not closed yet.")):
            self._gauges[metric] = prom.Gauge(metric, text, labels,
                                              registry=registry).labels(name)
        try:
            prom.start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port}: cannot listen there ({exc}): choose a "
                              "free port") from None
        logger.info("watch %s: metrics on http://%s:%d/metrics", name, host, port)

    def recorded(self, objects: int) -> None:
        if self._objects is not None:
            self._objects.inc(objects)

    def report(self, lag_s: float, waiting: int, windows: int) -> None:
        if self._gauges:
            self._gauges["rstream_watch_lag_seconds"].set(lag_s)
            self._gauges["rstream_watch_chunks_waiting"].set(waiting)
            self._gauges["rstream_watch_windows_open"].set(windows)
