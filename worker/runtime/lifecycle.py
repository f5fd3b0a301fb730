"""What a worker process starts once Celery says it is ready, and stops at its shutdown.

At ``worker_ready``: the warm-up of the default model (infer workers), the endpoints (``/metrics``,
``/healthz``, ``/readyz``; ``worker/runtime/health.py``), the heartbeat, the sweeper (infer
workers), and the "ready" line. At ``worker_shutting_down`` the worker stops being ready and drains
(``drain.py``: what it holds goes back to the queue, what runs has ``RSTREAM_DRAIN_SECONDS``); at
``worker_shutdown`` all of it stops, and the engine finishes what it holds.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from rstream.shared.constants import INFER_QUEUE
from rstream.shared.endpoints import EndpointServer, probe_route
from rstream.shared.jobs.sender import ChunkSender
from rstream.shared.loop import Loop
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.worker.runtime import metrics
from rstream.worker.runtime.drain import start_draining
from rstream.worker.runtime.health import Health
from rstream.worker.runtime.heartbeat import WorkerHeartbeat
from rstream.worker.runtime.sweeper import Sweeper
from rstream.worker.runtime.warmup import Warmup
from rstream.worker.serving.state import ProcessState

logger = logging.getLogger(__name__)


def connect(app: Celery, settings: Settings, state: ProcessState) -> Health:
    """Connect the handlers to Celery's worker signals; returns the process's probes."""
    background: list[Loop] = []
    servers: list[EndpointServer] = []
    health = Health(settings, state.batcher)

    @worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        queues = [queue.name for queue in getattr(sender.task_consumer, "queues", ())]
        concurrency = getattr(sender.pool, "limit", None)
        warmup = None
        if INFER_QUEUE in queues and settings.model:
            warmup = Warmup(state.load, settings.model).start()
            background.append(warmup)
        health.started(queues, warmup)
        server = metrics.serve(settings.metrics_host, settings.metrics_port, {
            "/healthz": probe_route(health.liveness), "/readyz": probe_route(health.readiness)})
        background.append(WorkerHeartbeat(state.jobs.redis, sender.hostname, queues,
                                          concurrency=concurrency, device=settings.device).start())
        if INFER_QUEUE in queues:
            background.append(Sweeper(settings, state.jobs, Storage(settings),
                                      ChunkSender(state.jobs, app), sender.hostname).start())
        if server is not None:
            servers.append(server)
        pool = type(sender.pool).__module__.rpartition(".")[2]
        logger.info("rstream worker %s ready: queues %s, %s pool of %s, device %s, model %s, "
                    "endpoints %s", sender.hostname, ",".join(queues), pool, concurrency,
                    settings.device, settings.model or "(per job)",
                    server.url if server else "off (RSTREAM_METRICS_PORT=0)")
        if pool != "thread":
            logger.warning("the %s pool runs tasks in other processes: this process's metrics "
                           "and probes do not see them; start workers with --pool threads",
                           pool)

    @worker_shutting_down.connect(weak=False)
    def _stopping(how: str = "Warm", **_: Any) -> None:
        health.stopping()
        if how == "Warm":  # SIGTERM: drain (worker/runtime/drain.py); a cold one cuts at once
            start_draining(settings.drain_seconds)

    @worker_shutdown.connect(weak=False)
    def _close(**_: Any) -> None:
        for loop in background:
            loop.stop()
        for server in servers:
            server.close()
        state.close()

    return health
