"""The routes an operator and an orchestrator read: the dashboard page, ``/healthz``,
``/readyz`` and ``/metrics``.

``/healthz`` runs on the event loop and touches nothing: it answers while Redis is away and
while every request thread waits. ``/readyz`` asks Redis once, with a short timeout, on a
thread pool of its own, so probes never queue behind the routes; it names no host or URL
(it needs no token), and the process's log has the whole reason.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import redis
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from redis.backoff import NoBackoff
from redis.retry import Retry

from rstream.producer.api.context import ApiContext
from rstream.producer.api.metrics import metrics_text, registry_for
from rstream.producer.client import FAIL_FAST_S
from rstream.shared.connections import redis_client, redis_problem, redis_state
from rstream.shared.constants import INFER_QUEUE
from rstream.shared.queue import heartbeats

logger = logging.getLogger(__name__)

PROBE_THREADS = 2


def add_routes(app: FastAPI, ctx: ApiContext) -> None:
    probes = ThreadPoolExecutor(PROBE_THREADS, thread_name_prefix="rstream-api-probe")
    probe_redis = redis_client(ctx.settings.redis_url, socket_timeout=FAIL_FAST_S,
                               socket_connect_timeout=FAIL_FAST_S, retry=Retry(NoBackoff(), 0))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        return resources.files("rstream.producer.api").joinpath("dashboard.html").read_text(
            "utf-8")

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, bool]:
        """The process is alive."""
        return {"ok": True}

    def ready() -> JSONResponse:
        try:
            absent = heartbeats.absence(probe_redis, INFER_QUEUE)
        except redis.RedisError as exc:
            logger.warning("readyz: %s", redis_problem(ctx.settings.redis_url, exc))
            return JSONResponse({"ready": False, "reason": redis_state(exc)}, status_code=503)
        if absent:
            return JSONResponse({"ready": False, "reason": absent}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Redis answers and at least one worker consumes the infer queue."""
        return await asyncio.get_running_loop().run_in_executor(probes, ready)

    registry = registry_for(ctx.client.jobs)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"])
    def metrics() -> PlainTextResponse:
        """Jobs by state, queue depth per queue, the age of the chunk next in line."""
        text, content_type = metrics_text(registry)
        return PlainTextResponse(text, media_type=content_type)
