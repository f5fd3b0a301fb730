"""Every chunk ends in exactly one of three ways (done, retried or requeued, the job stalled
with the reason), whatever raises: rstream's errors, errors that are not ours, storage down
while the error lines are written, Redis down.

The job records are real (a private redis-server); so is storage. The engine is replaced by a
stand-in where a fault cannot be caused for real from a test: a bug's exception inside the
engine, Celery's soft time limit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from rstream.shared.errors import ConfigError, TransientError
from rstream.shared.jobs.results import ok_line, part_uri, read_part
from rstream.shared.jobs.store import JobStore
from rstream.shared.queue.messages import ChunkMessage
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.worker.serving.chunks import ChunkContext, handle
from tests.services import free_port
from tests.settings import make_settings

URIS = ["img/a.jpg", "img/b.jpg", "img/c.jpg"]


class StandIn:
    """The engine's place: returns a line per URI, or raises what it is given."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.raises = raises
        self.calls = 0

    def score(self, uris: list[str], model_ref: str) -> list[dict[str, Any]]:
        self.calls += 1
        if self.raises is not None:
            raise self.raises
        return [ok_line(uri, [], "m@1") for uri in uris]


@pytest.fixture
def settings(redis_server: str, tmp_path: Path) -> Settings:
    return make_settings(redis_url=redis_server, storage_root=str(tmp_path / "root"))


def new_chunk(store: JobStore, results: str = "results") -> ChunkMessage:
    job = f"outcome-{uuid.uuid4().hex[:8]}"
    store.create_or_resume(job, model="random:resnet18", results=results, source="img/",
                           chunk_size=3)
    store.mark_sent(job, 0, 0, len(URIS))
    store.end_submit(job)
    return ChunkMessage(job, 0, URIS, "random:resnet18", results)


def run(message: ChunkMessage, store: JobStore, storage: Storage, engine: StandIn, *,
        retries: int = 0, context: Callable[[], ChunkContext] | None = None) -> Any:
    return handle(message, store, context or (lambda: ChunkContext(engine, storage, store)),
                  retries=retries, max_retries=2)


def test_a_chunk_that_scores_is_done_and_written(settings: Settings) -> None:
    store, storage = JobStore.from_url(settings.redis_url, 600), Storage(settings)
    message = new_chunk(store)
    outcome = run(message, store, storage, StandIn())
    assert (outcome.kind, outcome.summary["ok"]) == ("done", 3)
    assert len(read_part(storage, part_uri("results", message.job, 0))) == 3
    assert store.get(message.job).status == "done"


def test_an_error_that_is_not_ours_stalls_the_job_with_the_reason(settings: Settings) -> None:
    store, storage = JobStore.from_url(settings.redis_url, 600), Storage(settings)
    message = new_chunk(store)
    outcome = run(message, store, storage, StandIn(ValueError("boom in a library")))
    assert outcome.kind == "stalled"
    job = store.get(message.job)
    assert job.stalled and job.finished, "status and wait see it at once"
    assert job.last_error == "ValueError: boom in a library"


def test_a_part_that_cannot_be_written_stalls_the_job(settings: Settings) -> None:
    store, storage = JobStore.from_url(settings.redis_url, 600), Storage(settings)
    storage.write("blocked", b"a file where the results folder should be")
    message = new_chunk(store, results="blocked")
    outcome = run(message, store, storage, StandIn())
    assert outcome.kind == "stalled"
    assert "Not a directory" in store.get(message.job).last_error


def test_an_engine_that_cannot_be_built_stalls_the_job_with_the_reason(
        settings: Settings) -> None:
    store, storage = JobStore.from_url(settings.redis_url, 600), Storage(settings)
    message = new_chunk(store)

    def broken() -> ChunkContext:
        raise ConfigError("RSTREAM_DEVICE=cuda but this process sees no CUDA device")

    outcome = run(message, store, storage, StandIn(), context=broken)
    assert outcome.kind == "stalled"
    assert "sees no CUDA device" in store.get(message.job).last_error


@pytest.mark.parametrize("error", [TransientError("s3://b/k: SlowDown (after retries)"),
                                   SoftTimeLimitExceeded("chunk took too long")])
def test_transient_faults_are_retried_then_every_image_gets_an_error_line(
        settings: Settings, error: BaseException) -> None:
    store, storage = JobStore.from_url(settings.redis_url, 600), Storage(settings)
    message = new_chunk(store)
    engine = StandIn(error)
    first = run(message, store, storage, engine, retries=0)
    assert first.kind == "retry" and 0.5 <= first.delay <= 1.0
    assert run(message, store, storage, engine, retries=1).kind == "retry"
    last = run(message, store, storage, engine, retries=2)
    assert last.kind == "done" and last.summary["failed"] == 3
    lines = read_part(storage, part_uri("results", message.job, 0))
    assert [line["error"]["type"] for line in lines] == [type(error).__name__] * 3
    assert store.get(message.job).status == "done"


def test_error_lines_that_cannot_be_written_stall_instead_of_vanishing(
        settings: Settings, aws_environment: None) -> None:
    # Results on an S3 endpoint where nothing listens: every write fails, for real.
    dead_s3 = f"http://127.0.0.1:{free_port()}"
    down = make_settings(**{**vars_of(settings), "s3_endpoint_url": dead_s3,
                            "s3_max_attempts": 1, "s3_connect_timeout": 0.2})
    store, storage = JobStore.from_url(down.redis_url, 600), Storage(down)
    message = new_chunk(store, results="s3://photos/results")
    engine = StandIn()
    assert run(message, store, storage, engine, retries=0).kind == "retry"
    outcome = run(message, store, storage, engine, retries=2)
    assert outcome.kind == "stalled"
    job = store.get(message.job)
    assert job.stalled and job.last_error.startswith("TransientError")


def test_redis_unreachable_requeues(settings: Settings) -> None:
    store, storage = JobStore.from_url(settings.redis_url, 600), Storage(settings)
    message = new_chunk(store)
    gone = JobStore.from_url(f"redis://127.0.0.1:{free_port()}/0", 600, ride_out_s=0)
    outcome = run(message, gone, storage, StandIn(),
                  context=lambda: ChunkContext(StandIn(), storage, gone))
    assert outcome.kind == "requeue"
    assert store.get(message.job).outstanding == 1, "nothing was recorded"


def vars_of(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}
