"""``rstream exporter``: the one process that exports the queues' metrics for Prometheus.

Run one per Redis (not one per worker: the numbers are the same for every process that reads
them). It serves, on ``RSTREAM_METRICS_HOST`` and ``RSTREAM_EXPORTER_PORT`` (or ``--port``):

- ``/metrics``: queue depth, the age of the chunk next in line, unacknowledged messages, live
  workers per queue, dead letters, and whether Redis answered (``shared/queue/metrics.py``);
- ``/healthz``: 200 while the process serves; ``/readyz``: 200 when Redis answers.

It starts even while Redis is down (``rstream_redis_up`` says 0 then) and serves until SIGTERM
or SIGINT. No torch: it runs on a submit-only host.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from rstream.shared.connections import check_redis, redis_client
from rstream.shared.endpoints import EndpointServer, metrics_route, probe_route
from rstream.shared.errors import ConfigError
from rstream.shared.masking import mask_url
from rstream.shared.queue.metrics import QueueCollector
from rstream.shared.settings import Settings

logger = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 5.0


def serve(settings: Settings, port: int | None = None) -> int:
    """Serve the queues' metrics on ``port`` (default ``RSTREAM_EXPORTER_PORT``) until SIGTERM."""
    port = port or settings.exporter_port
    client = redis_client(settings.redis_url, socket_timeout=SCRAPE_TIMEOUT_S,
                          socket_connect_timeout=SCRAPE_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
    registry = CollectorRegistry()
    registry.register(QueueCollector(client))

    def redis_ready() -> tuple[bool, dict[str, Any]]:
        try:
            check_redis(settings.redis_url, SCRAPE_TIMEOUT_S)
        except ConfigError as exc:  # the message masks the password
            return False, {"redis": str(exc)}
        return True, {"redis": "connected"}

    routes = {"/metrics": metrics_route(registry),
              "/healthz": probe_route(lambda: (True, {"exporter": "serving"})),
              "/readyz": probe_route(redis_ready)}
    try:
        server = EndpointServer(settings.metrics_host, port, routes)
    except OSError as exc:
        raise ConfigError(f"rstream exporter cannot listen on {settings.metrics_host}:{port} "
                          f"({exc}): pick a free port with --port or RSTREAM_EXPORTER_PORT, or "
                          "an address of this machine with RSTREAM_METRICS_HOST") from None
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    logger.info("rstream exporter: queue metrics of %s on %s/metrics",
                mask_url(settings.redis_url), server.url)
    stop.wait()
    server.close()
    client.close()
    return 0
