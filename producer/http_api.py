"""``rstream api``: the queue submission API over HTTP (FastAPI on uvicorn), and a dashboard.

Every route calls the functions the CLI calls (``producer.submit``, ``producer.monitor``,
``producer.training``), so the two never disagree. Versioned under ``/v1``; OpenAPI at
``/docs``. Bodies are validated by pydantic, errors are JSON with the field or the reason
named, never a 500 for anything a caller sends. No torch on this side.

Sources go through the same checks as the CLI (inside the storage root, allowed buckets),
and a list file is read from storage only, never from this machine's file system.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Annotated, Any, Literal

import redis
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from producer import monitor, training
from producer.api_auth import Tokens, check_bind
from producer.api_metrics import metrics_text, registry_for
from producer.submit import Client, check_model, resume, retry, submit_counted
from producer.watches import all_watches
from shared import sources, workers
from shared.connections import redis_problem
from shared.constants import INFER_QUEUE
from shared.errors import (
    AccessDeniedError,
    ConfigError,
    JobConflict,
    NotFoundError,
    RstreamError,
)
from shared.jobs import check_job_id, new_job_id
from shared.registry import Registry
from shared.results import job_lines
from shared.settings import Settings

logger = logging.getLogger(__name__)

Scope = Literal["read", "submit", "admin"]
Uri = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
RECORDED_WAIT_S = 10.0  # how long a POST waits for the job record to exist


class ApiError(Exception):
    """An HTTP error with a JSON body: the status, a type and a message."""

    def __init__(self, status: int, kind: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers


class SubmitBody(BaseModel):
    """``POST /v1/jobs``: a source (a folder or a list file in storage) or inline URIs."""

    model_config = ConfigDict(extra="forbid")
    source: str | None = Field(None, min_length=1, max_length=4096,
                               description="s3://bucket/prefix/, a folder under the storage "
                               "root, or a list file in storage")
    uris: list[Uri] | None = Field(None, min_length=1, description="inline URIs")
    model: str | None = Field(None, max_length=512, description="default: RSTREAM_MODEL")
    job: str | None = Field(None, max_length=128, description="job id; the same id with the "
                            "same arguments returns the existing job")
    chunk_size: int | None = Field(None, ge=1, le=10_000,
                                   description="default: RSTREAM_CHUNK_SIZE")

    @model_validator(mode="after")
    def _one_source(self) -> SubmitBody:
        if (self.source is None) == (self.uris is None):
            raise ValueError("give exactly one of source and uris")
        return self


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=64)


class TrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=64)
    mode: Literal["feature-extract", "finetune"] | None = None
    epochs: int | None = Field(None, ge=1, le=1000)
    data: str | None = Field(None, max_length=4096)
    start: str | None = Field(None, max_length=512)
    force: bool = False
    preset: str | None = Field(None, max_length=64, description="a named set of options "
                               "(--preset)")
    options: dict[str, Any] | None = Field(None, description="advanced options (--set)")


class _Context:
    """What the routes share: settings, the client, the registry, the tokens, a thread pool
    for long submissions."""

    def __init__(self, settings: Settings, client: Client) -> None:
        self.settings, self.client = settings, client
        self.tokens = Tokens.from_settings(settings)
        self.registry = Registry(client.storage, settings.models)
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="rstream-api-submit")

    def need(self, scope: Scope) -> Any:
        """A route dependency: the bearer token must grant ``scope``."""

        def check(authorization: Annotated[str | None, Header()] = None) -> None:
            granted = self.tokens.scopes(authorization)
            if not granted:
                raise ApiError(401, "Unauthorized", "a bearer token is needed: send "
                               "Authorization: Bearer TOKEN", {"WWW-Authenticate": "Bearer"})
            if scope not in granted:
                raise ApiError(403, "Forbidden", f"this token lacks the {scope} scope")

        return Depends(check)

    def job_view(self, job_id: str) -> dict[str, Any]:
        """A job as the API shows it: counts, state, rate, ETA, models used, notes."""
        state = monitor.status(self.client.jobs, job_id)
        models: Counter[str] = Counter()
        for _, counts in self.client.jobs.chunk_counts(job_id):
            models.update({str(k): int(v) for k, v in counts.get("models", {}).items()})
        return {**state.as_dict(), "models": dict(models),
                "notes": monitor.notes(self.client.jobs, state.job,
                                       self.settings.visibility_timeout),
                "url": f"/v1/jobs/{job_id}", "results_url": f"/v1/jobs/{job_id}/results"}

    def in_background(self, job: str, work: Callable[[], Any]) -> None:
        """Run a long submission in a thread; return once its first chunks are recorded (or
        the work failed, which is then raised here)."""
        future = self.pool.submit(work)
        deadline = time.monotonic() + RECORDED_WAIT_S
        while not future.done() and time.monotonic() < deadline:
            if self.client.jobs.exists(job) and self.client.jobs.get(job).listed_images:
                return
            time.sleep(0.02)
        if future.done():
            future.result()  # raises what the submission raised


def create_app(settings: Settings, client: Client | None = None) -> FastAPI:
    """The API for ``settings``; ConfigError when it must not start (see ``api_auth``)."""
    ctx = _Context(settings, client or Client(settings, check=False))  # Redis may come later
    check_bind(settings, ctx.tokens)
    app = FastAPI(title="rstream", version="1",
                  description="Submit images for scoring, follow jobs, read results.")
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    _add_error_handlers(app)
    _health_routes(app, ctx)
    _job_routes(app, ctx)
    _model_routes(app, ctx)
    return app


def _health_routes(app: FastAPI, ctx: _Context) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        return resources.files("producer").joinpath("dashboard.html").read_text("utf-8")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, bool]:
        """The process is alive."""
        return {"ok": True}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Redis answers and at least one worker consumes the infer queue."""
        try:
            absent = workers.absence(ctx.client.jobs.redis, INFER_QUEUE)
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


def _job_routes(app: FastAPI, ctx: _Context) -> None:  # noqa: PLR0915 - one route per block
    client, settings = ctx.client, ctx.settings
    read, submit_scope = ctx.need("read"), ctx.need("submit")

    @app.post("/v1/jobs", status_code=202, tags=["jobs"], dependencies=[submit_scope])
    def create_job(body: SubmitBody) -> JSONResponse:
        """Submit a job; 202 with its id and URL once it is recorded (sending goes on)."""
        model = check_model(body.model or settings.model, client)
        client.storage.resolve(settings.results)
        job = check_job_id(body.job or new_job_id())
        size = body.chunk_size or settings.chunk_size
        if body.uris is not None:
            if len(body.uris) > settings.api_max_uris:
                raise ApiError(413, "TooManyUris", f"{len(body.uris)} inline URIs, above "
                               f"RSTREAM_API_MAX_URIS={settings.api_max_uris}: put them in a "
                               "list file in storage and submit that as the source")
            source = sources.Source("list", sources.LIST, body.uris)
        else:
            assert body.source is not None
            source = sources.resolve(body.source, client.storage, local_files=False)
        if client.jobs.exists(job):
            existing = client.jobs.get(job)
            same = (existing.source, existing.model, existing.results,
                    existing.chunk_size) == (source.location, model, settings.results, size)
            if not same:
                raise JobConflict(f"job {job} already exists with another source, model, "
                                  "output or chunk size: choose another job id")
            return JSONResponse({**ctx.job_view(job), "existing": True}, status_code=200)

        def work() -> Any:
            return submit_counted(source, job=job, model=model, chunk_size=size, client=client)

        if source.kind == "list":
            work()
        else:
            ctx.in_background(job, work)
        return JSONResponse(ctx.job_view(job), status_code=202)

    @app.get("/v1/jobs", tags=["jobs"], dependencies=[read])
    def list_jobs(limit: Annotated[int, Query(ge=1, le=500)] = 20,
                  offset: Annotated[int, Query(ge=0, le=100_000)] = 0) -> dict[str, Any]:
        """Recent jobs, newest first, a page at a time."""
        views = [ctx.job_view(job.id) for job in client.jobs.recent(offset + limit)[offset:]]
        return {"jobs": views, "next": offset + limit if len(views) == limit else None}

    @app.get("/v1/jobs/{job}", tags=["jobs"], dependencies=[read])
    def get_job(job: str) -> dict[str, Any]:
        """Counts, state, rate, ETA, model versions, and what the job waits for."""
        return ctx.job_view(check_job_id(job))

    @app.get("/v1/jobs/{job}/results", tags=["jobs"], dependencies=[read])
    def results(job: str, failed: bool = False) -> StreamingResponse:
        """The result lines as NDJSON, streamed part by part (``?failed=true``: failures)."""
        record = client.jobs.get(check_job_id(job))

        def lines() -> Iterator[bytes]:
            for line in job_lines(client.storage, record.results, job, failed_only=failed):
                yield json.dumps(line, ensure_ascii=False).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.get("/v1/jobs/{job}/summary", tags=["jobs"], dependencies=[read])
    def summary(job: str) -> dict[str, Any]:
        """Failures grouped by reason and the most frequent top-1 labels (the dashboard's)."""
        record = client.jobs.get(check_job_id(job))
        failures: Counter[tuple[str, str]] = Counter()
        labels: Counter[str] = Counter()
        for line in job_lines(client.storage, record.results, job):
            if line["ok"]:
                labels[str(line["top"][0]["label"])] += 1
            else:
                failures[(str(line["error"]["type"]), _reason(line["error"]["message"]))] += 1
        return {"job": job,
                "failures": [{"type": t, "reason": r, "count": n}
                             for (t, r), n in failures.most_common(20)],
                "labels": [{"label": label, "count": n} for label, n in labels.most_common(15)]}

    @app.get("/v1/watches", tags=["jobs"], dependencies=[read])
    def watches() -> dict[str, Any]:
        """Every watch (``rstream watch``): its source, lag, and open windows."""
        return {"watches": all_watches(client.jobs.redis, client.jobs)}

    @app.post("/v1/jobs/{job}/cancel", tags=["jobs"], dependencies=[submit_scope])
    def cancel(job: str) -> dict[str, Any]:
        client.jobs.cancel(check_job_id(job))
        return ctx.job_view(job)

    @app.post("/v1/jobs/{job}/retry", status_code=202, tags=["jobs"],
              dependencies=[submit_scope])
    def retry_job(job: str) -> dict[str, Any]:
        """Resubmit the failed images of a finished job."""
        count = retry(check_job_id(job), client=client)
        return {**ctx.job_view(job), "resubmitted": count}

    @app.post("/v1/jobs/{job}/resume", status_code=202, tags=["jobs"],
              dependencies=[submit_scope])
    def resume_job(job: str) -> dict[str, Any]:
        """Send again the recorded chunks that are not done; finish a stopped submission."""
        client.jobs.get(check_job_id(job))
        ctx.pool.submit(resume, job, client=client)
        return ctx.job_view(job)


def _model_routes(app: FastAPI, ctx: _Context) -> None:
    registry, read, admin = ctx.registry, ctx.need("read"), ctx.need("admin")

    @app.get("/v1/models", tags=["models"], dependencies=[read])
    def list_models() -> dict[str, Any]:
        return {"models": [{"name": name, "production": (registry.read_pointer(name)[0] or {})
                            .get("version")} for name in registry.names()]}

    @app.get("/v1/models/{name}", tags=["models"], dependencies=[read])
    def get_model(name: str) -> dict[str, Any]:
        model = training.model_versions(registry, name)
        if not model["versions"] and model["production"] is None:
            raise NotFoundError(f"model {name!r} has no versions in {ctx.settings.models}")
        return model

    @app.post("/v1/models/{name}/promote", tags=["models"], dependencies=[admin])
    def promote(name: str, body: PromoteBody) -> dict[str, Any]:
        pointer, changed = training.promote(registry, name, body.version)
        return {"name": name, "production": pointer["version"], "changed": changed}

    @app.post("/v1/models/{name}/rollback", tags=["models"], dependencies=[admin])
    def rollback(name: str) -> dict[str, Any]:
        pointer = registry.rollback(name)
        return {"name": name, "production": pointer["version"], "changed": True}

    @app.post("/v1/train", status_code=202, tags=["training"], dependencies=[admin])
    def train(body: TrainBody) -> dict[str, Any]:
        """Send a fine-tune run to the trainer; its run id."""
        options = training.checked_options(
            ctx.settings, name=body.name, mode=body.mode, epochs=body.epochs,
            start=body.start, force=body.force, data=body.data, overrides=body.options,
            preset_name=body.preset)
        run = training.start_run(ctx.client, options)
        return {"run": run, "url": f"/v1/train/{run}"}

    @app.get("/v1/train/{run}", tags=["training"], dependencies=[read])
    def train_state(run: str) -> dict[str, Any]:
        return {"run": run, **training.run_state(ctx.client, run)}


def _reason(message: str) -> str:
    """An error message without the URI it starts with, so that images group by reason."""
    head, colon, rest = message.partition(": ")
    return rest if colon and ("/" in head or head.startswith("s3:")) else message


_STATUS = {NotFoundError: 404, AccessDeniedError: 403, JobConflict: 409, ConfigError: 400}


def _add_error_handlers(app: FastAPI) -> None:
    def body(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": {"type": kind, "message": message, **extra}},
                            status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        response = body(exc.status, exc.kind, str(exc))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RstreamError)
    async def rstream_error(_: Request, exc: RstreamError) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
        return body(status, type(exc).__name__, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(error.get("type") == "json_invalid" for error in errors):
            return body(400, "MalformedJSON", "the request body is not valid JSON")
        fields = [{"field": ".".join(str(p) for p in error.get("loc", ()) if p != "body"),
                   "message": error.get("msg", "")} for error in errors]
        first = fields[0] if fields else {"field": "", "message": "invalid"}
        return body(422, "ValidationError", f"{first['field'] or 'body'}: {first['message']}",
                    fields=fields)

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        settings: Settings = request.app.state.settings
        return body(503, "RedisUnavailable", str(redis_problem(settings.redis_url, exc)))


class BodyLimit:
    """Refuse request bodies above ``limit`` bytes with 413, before they are read whole."""

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._too_large(send)

    async def _too_large(self, send: Any) -> None:
        payload = json.dumps({"error": {"type": "BodyTooLarge", "message": f"the request body "
                             f"is above RSTREAM_API_MAX_BODY_BYTES={self.limit}"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class _TooLarge(Exception):
    pass


def api_command(args: argparse.Namespace, settings: Settings) -> int:
    """``rstream api``: serve the API with uvicorn until SIGTERM or Ctrl-C."""
    import uvicorn

    if args.host:
        settings = dataclasses.replace(settings, api_host=args.host)
    if args.port:
        settings = dataclasses.replace(settings, api_port=args.port)
    app = create_app(settings)
    logger.info("rstream api on http://%s:%d/ (OpenAPI at /docs)", settings.api_host,
                settings.api_port)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port,
                log_level=settings.log_level, access_log=False)
    return 0

