"""The late-writer rule (#24 point 3): a chunk's part written for a generation is not written
again by another attempt of that generation (a worker paused or partitioned past the
visibility timeout while the chunk was redone); that attempt records the part that is there,
so the part and the job's counts agree. Real job records (a private redis-server), real
local storage; the attempts are write_part calls with lines that differ, as a hot-reloaded
model's would.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from rstream.shared.jobs.results import count_lines, encode, ok_line, part_uri, read_part
from rstream.shared.jobs.store import JobStore
from rstream.shared.queue.messages import ChunkMessage
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.worker.serving.chunks import ChunkContext, write_part
from tests.settings import make_settings

URIS = ["img/a.jpg", "img/b.jpg", "img/c.jpg"]


class NoEngine:
    """write_part never scores; the context only needs an engine's place."""

    def score(self, uris: list[str], model_ref: str) -> list[dict[str, Any]]:
        raise AssertionError("write_part does not score")


@pytest.fixture
def ctx(redis_server: str, tmp_path: Path) -> ChunkContext:
    settings: Settings = make_settings(redis_url=redis_server,
                                       storage_root=str(tmp_path / "root"))
    return ChunkContext(NoEngine(), Storage(settings), JobStore.from_url(redis_server, 600))


def new_chunk(store: JobStore) -> ChunkMessage:
    job = f"late-{uuid.uuid4().hex[:8]}"
    store.create_or_resume(job, model="random:resnet18", results="results", source="img/",
                           chunk_size=3)
    store.mark_sent(job, 0, 0, len(URIS))
    store.end_submit(job)
    return ChunkMessage(job, 0, URIS, "random:resnet18", "results")


def scored(model: str) -> list[dict[str, Any]]:
    return [ok_line(uri, [], model) for uri in URIS]


def chunk_models(store: JobStore, job: str) -> dict[str, int]:
    return dict(store.chunk_counts(job))[0]["models"]


def test_a_late_write_after_the_chunk_was_redone_is_refused(
        ctx: ChunkContext, caplog: pytest.LogCaptureFixture) -> None:
    message = new_chunk(ctx.jobs)
    uri = part_uri("results", message.job, 0)
    assert "refused" not in write_part(message, ctx, scored("m@1"))  # the redoing worker
    before = ctx.storage.read(uri)
    with caplog.at_level(logging.WARNING, logger="rstream.worker.serving.chunks"):
        late = write_part(message, ctx, scored("m@2"))  # the late one, with another model
    assert late["refused"] and late["same"] is False
    assert ctx.storage.read(uri) == before, "the part that was counted stays"
    job = ctx.jobs.get(message.job)
    assert (job.status, job.ok, job.failed) == ("done", 3, 0)
    assert chunk_models(ctx.jobs, message.job) == {"m@1": 3}, "counts follow the part"
    assert "late write refused" in caplog.text


def test_a_part_written_but_not_recorded_is_adopted_by_the_next_attempt(
        ctx: ChunkContext) -> None:
    # The first attempt wrote its part and crashed before it was recorded.
    message = new_chunk(ctx.jobs)
    uri = part_uri("results", message.job, 0)
    ctx.storage.write(uri, encode(scored("m@1")))
    assert ctx.jobs.get(message.job).status == "running"
    redelivered = write_part(message, ctx, scored("m@2"))
    assert redelivered["refused"]
    assert read_part(ctx.storage, uri) == scored("m@1")
    job = ctx.jobs.get(message.job)
    assert (job.status, job.outstanding, job.ok) == ("done", 0, 3)
    assert chunk_models(ctx.jobs, message.job) == {"m@1": 3}


def test_a_retry_generation_is_fenced_by_its_own_done_flag(ctx: ChunkContext) -> None:
    message = new_chunk(ctx.jobs)
    uri = part_uri("results", message.job, 0)
    write_part(message, ctx, scored("m@1"))
    generation = ctx.jobs.start_retry(message.job)
    ctx.jobs.mark_sent(message.job, 0, generation, len(URIS))
    ctx.jobs.end_submit(message.job)
    retried = ChunkMessage(message.job, 0, URIS[:1], message.model, "results",
                           generation=generation)
    assert "refused" not in write_part(retried, ctx, scored("m@2")[:1])  # replaces a's line
    after_retry = read_part(ctx.storage, uri)
    assert [line["model"] for line in after_retry] == ["m@2", "m@1", "m@1"]
    late = write_part(retried, ctx, scored("m@3")[:1])
    assert late["refused"]
    assert read_part(ctx.storage, uri) == after_retry
    assert count_lines(after_retry)["models"] == chunk_models(ctx.jobs, message.job)


def test_a_late_write_to_s3_is_refused_by_the_conditional_create(
        redis_server: str, s3_settings: Settings, s3_bucket: str) -> None:
    store, storage = JobStore.from_url(redis_server, 600), Storage(s3_settings)
    s3 = ChunkContext(NoEngine(), storage, store)
    results = f"s3://{s3_bucket}/results"
    job = f"late-{uuid.uuid4().hex[:8]}"
    store.create_or_resume(job, model="random:resnet18", results=results, source="img/",
                           chunk_size=3)
    store.mark_sent(job, 0, 0, len(URIS))
    store.end_submit(job)
    message = ChunkMessage(job, 0, URIS, "random:resnet18", results)
    write_part(message, s3, scored("m@1"))
    assert write_part(message, s3, scored("m@2"))["refused"]
    assert read_part(storage, part_uri(results, job, 0)) == scored("m@1")
    assert chunk_models(store, job) == {"m@1": 3}
