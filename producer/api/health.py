"""The routes an operator and an orchestrator read: the dashboard page, ``/healthz``,
``/readyz`` and ``/metrics``."""

from __future__ import annotations

from importlib import resources

import redis
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from rstream.producer.api.context import ApiContext
from rstream.producer.api.metrics import metrics_text, registry_for
from rstream.shared.connections import redis_problem
from rstream.shared.constants import INFER_QUEUE
from rstream.shared.queue import heartbeats


def add_routes(app: FastAPI, ctx: ApiContext) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        return resources.files("rstream.producer.api").joinpath("dashboard.html").read_text("utf-8")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, bool]:
        """The process is alive."""
        return {"ok": True}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Redis answers and at least one worker consumes the infer queue."""
        try:
            absent = heartbeats.absence(ctx.client.jobs.redis, INFER_QUEUE)
        except redis.RedisError as exc:
            return JSONResponse({"ready": False, "reason": str(redis_problem(
                ctx.settings.redis_url, exc))}, status_code=503)
        if absent:
            return JSONResponse({"ready": False, "reason": absent}, status_code=503)
        return JSONResponse({"ready": True})

    registry = registry_for(ctx.client.jobs)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"])
    def metrics() -> PlainTextResponse:
        """Jobs by state, queue depth per queue, the age of the chunk next in line."""
        text, content_type = metrics_text(registry)
        return PlainTextResponse(text, media_type=content_type)
