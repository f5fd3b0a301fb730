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
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from rstream.producer.api.context import ApiContext, ApiError
from rstream.producer.monitor import throughput
from rstream.producer.submit import prepare, prepare_resume, retry
from rstream.producer.watch.record import all_watches
from rstream.shared.jobs.results import job_lines
from rstream.shared.names import JOB_ID
from rstream.shared.tables.reader import MAX_KEEP, from_options
from rstream.shared.uris import MAX_CARRIED

Uri = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CARRIED)]


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
    format: Literal["csv", "jsonl", "parquet"] | None = Field(
        None, description="read the list file as a table (default: by its extension)")
    uri_column: str | None = Field(None, min_length=1, max_length=256,
                                   description="the table's column of URIs (default: uri)")
    keep: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] | None = Field(
        None, max_length=MAX_KEEP, description="table columns carried into every result line")
    results_format: Literal["jsonl", "parquet"] | None = Field(
        None, description="the job's results format (default: RSTREAM_RESULTS_FORMAT); parquet "
        "compacts the parts into scores-NNNNN.parquet files at the job's end")

    @model_validator(mode="after")
    def _one_source(self) -> SubmitBody:
        if (self.source is None) == (self.uris is None):
            raise ValueError("give exactly one of source and uris")
        return self


def add_routes(app: FastAPI, ctx: ApiContext) -> None:
    client, settings = ctx.client, ctx.settings
    read, submit_scope = ctx.need("read"), ctx.need("submit")

    @app.post("/v1/jobs", status_code=202, tags=["jobs"], dependencies=[submit_scope])
    def create_job(body: SubmitBody,
                   authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
        """Submit a job; 202 with its id and URL once it is recorded (sending goes on). The
        same id with the same arguments (an inline list: the same URIs) answers 200 with the
        existing job, other arguments 409; of concurrent callers exactly one gets the 202."""
        if body.uris is not None and len(body.uris) > settings.api_max_uris:
            raise ApiError(413, "TooManyUris", f"{len(body.uris)} inline URIs, above "
                           f"RSTREAM_API_MAX_URIS={settings.api_max_uris}: put them in a "
                           "list file in storage and submit that as the source")
        source = body.uris if body.uris is not None else body.source
        assert source is not None
        # "Did you mean photos/?" names folders: only for a caller who may read.
        hints = "read" in ctx.tokens.scopes(authorization)
        table = from_options(body.format, body.uri_column, body.keep)
        submission = prepare(source, body.job, body.model, body.chunk_size, client=client,
                             local_files=False, hints=hints, table=table,
                             results_format=body.results_format)
        submission.keep_record = True
        if not submission.open(resume=False):
            return JSONResponse({**ctx.job_view(submission.job), "existing": True},
                                status_code=200)
        if submission.source.kind == "list":
            submission.send()  # at most RSTREAM_API_MAX_URIS: sent before the answer
        else:
            ctx.in_background(submission.job, submission.send)
        return JSONResponse(ctx.job_view(submission.job), status_code=202)

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

    @app.get("/v1/jobs/{job}/throughput", tags=["jobs"], dependencies=[read])
    def job_throughput(job: str, bins: Annotated[int, Query(ge=1, le=200)] = 24
                       ) -> dict[str, Any]:
        """Images per second and the share of failures over the job's life, from the time
        each chunk was recorded done (the dashboard's chart)."""
        return throughput(client.jobs, JOB_ID.check(job), bins)

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
        """Send again the recorded chunks that are not done; finish a stopped submission.
        Its source is checked before the answer (storage only, never this host's files)."""
        submission = prepare_resume(JOB_ID.check(job), client=client, local_files=False)
        submission.open()
        ctx.in_background(job, submission.send)
        return ctx.job_view(job)


def _reason(message: str) -> str:
    """An error message without the URI it starts with, so that images group by reason."""
    head, colon, rest = message.partition(": ")
    return rest if colon and ("/" in head or head.startswith("s3:")) else message
