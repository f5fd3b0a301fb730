"""The job routes of the HTTP API: submit, list, read, results, summary, cancel, retry,
resume, and the watches.

Every route calls the functions the CLI calls (``rstream.producer.submit``,
``rstream.producer.monitor``), so the two never disagree. Sources go through the same checks
as the CLI (inside the storage root, allowed buckets), and a list file is read from storage
only, never from this machine's file system.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from rstream.producer.api.context import ApiContext, ApiError
from rstream.producer.submit import check_model, resume, retry, submit_counted
from rstream.producer.watch.record import all_watches
from rstream.shared import sources
from rstream.shared.errors import JobConflict
from rstream.shared.jobs.results import job_lines
from rstream.shared.jobs.store import new_job_id
from rstream.shared.names import JOB_ID

Uri = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


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


def add_routes(app: FastAPI, ctx: ApiContext) -> None:  # noqa: PLR0915 - one route per block
    client, settings = ctx.client, ctx.settings
    read, submit_scope = ctx.need("read"), ctx.need("submit")

    @app.post("/v1/jobs", status_code=202, tags=["jobs"], dependencies=[submit_scope])
    def create_job(body: SubmitBody) -> JSONResponse:
        """Submit a job; 202 with its id and URL once it is recorded (sending goes on)."""
        model = check_model(body.model or settings.model, client)
        client.storage.resolve(settings.results)
        job = JOB_ID.check(body.job or new_job_id())
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
            if not client.jobs.get(job).same_submission(
                    source=source.location, model=model, results=settings.results,
                    chunk_size=size):
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
        return ctx.job_view(JOB_ID.check(job))

    @app.get("/v1/jobs/{job}/results", tags=["jobs"], dependencies=[read])
    def results(job: str, failed: bool = False) -> StreamingResponse:
        """The result lines as NDJSON, streamed part by part (``?failed=true``: failures)."""
        record = client.jobs.get(JOB_ID.check(job))

        def lines() -> Iterator[bytes]:
            for line in job_lines(client.storage, record.results, job, failed_only=failed):
                yield json.dumps(line, ensure_ascii=False).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.get("/v1/jobs/{job}/summary", tags=["jobs"], dependencies=[read])
    def summary(job: str) -> dict[str, Any]:
        """Failures grouped by reason and the most frequent top-1 labels (the dashboard's)."""
        record = client.jobs.get(JOB_ID.check(job))
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
        client.jobs.cancel(JOB_ID.check(job))
        return ctx.job_view(job)

    @app.post("/v1/jobs/{job}/retry", status_code=202, tags=["jobs"],
              dependencies=[submit_scope])
    def retry_job(job: str) -> dict[str, Any]:
        """Resubmit the failed images of a finished job."""
        count = retry(JOB_ID.check(job), client=client)
        return {**ctx.job_view(job), "resubmitted": count}

    @app.post("/v1/jobs/{job}/resume", status_code=202, tags=["jobs"],
              dependencies=[submit_scope])
    def resume_job(job: str) -> dict[str, Any]:
        """Send again the recorded chunks that are not done; finish a stopped submission."""
        client.jobs.get(JOB_ID.check(job))
        ctx.pool.submit(resume, job, client=client)
        return ctx.job_view(job)


def _reason(message: str) -> str:
    """An error message without the URI it starts with, so that images group by reason."""
    head, colon, rest = message.partition(": ")
    return rest if colon and ("/" in head or head.startswith("s3:")) else message
