"""A job that lost chunk messages (a Redis crash can lose one) is noticed and resumed."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import resume, submit
from rstream.shared.constants import INFER_QUEUE, JOB_KEY
from rstream.shared.errors import ConfigError
from rstream.shared.queue.inspect import queued
from rstream.worker.runtime.sweeper import margin_s
from rstream.worker.samples import write_samples
from tests.pipeline import assert_one_line_per_uri, pipeline_settings
from tests.services import WorkerProcess


@pytest.fixture
def client(redis_server: str, tmp_path: Path) -> Client:
    # Database 11: no worker consumes it, so the queue holds exactly what was sent.
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + "/11", tmp_path,
                                 chunk_size=2, results="out")
    client = Client(settings)
    client.jobs.redis.flushdb()
    return client


def test_lost_chunk_messages_are_noticed_and_resent_once(client: Client, tmp_path: Path) -> None:
    manifest = tmp_path / "uris.txt"
    manifest.write_text("".join(f"images/{i}.jpg\n" for i in range(5)))
    job = submit(str(manifest), job=f"lost-{uuid.uuid4().hex[:6]}", model="random:resnet18",
                 client=client)
    assert queued(client.jobs.redis, INFER_QUEUE) == 3
    assert monitor.stuck_reason(client.jobs, job, idle_after_s=60) is None, "too early to say"

    client.jobs.redis.delete(INFER_QUEUE)  # the messages are gone, as after a Redis crash
    client.jobs.redis.hset(JOB_KEY.format(job=job), "updated_at", time.time() - 600)
    reason = monitor.stuck_reason(client.jobs, job, idle_after_s=60)
    assert reason is not None and f"rstream resume {job}" in reason and "3 chunk(s)" in reason

    assert resume(job, client=client).chunks == 3
    assert queued(client.jobs.redis, INFER_QUEUE) == 3
    record = client.jobs.get(job)
    assert (record.images, record.chunks, record.outstanding) == (5, 3, 3), "counted once"
    assert monitor.stuck_reason(client.jobs, job, idle_after_s=60) is None


def test_a_job_submitted_as_a_list_resumes_from_its_input_record(client: Client) -> None:
    uris = [f"images/{i}.jpg" for i in range(5)]
    job = submit(uris, model="random:resnet18", client=client)
    client.jobs.redis.delete(INFER_QUEUE)
    assert resume(job, client=client).chunks == 3
    sent = [json.loads(base64.b64decode(json.loads(raw)["body"]))[1]["message"]["uris"]
            for raw in reversed(client.jobs.redis.lrange(INFER_QUEUE, 0, -1))]
    assert sent == [uris[0:2], uris[2:4], uris[4:5]], "the same chunks, from the record"


def test_a_parquet_job_resumes_as_parquet_under_a_jsonl_default(client: Client) -> None:
    parquet = dataclasses.replace(client.settings, results_format="parquet")
    job = submit([f"images/{i}.jpg" for i in range(3)], model="random:resnet18",
                 settings=parquet, client=Client(parquet))
    assert client.jobs.get(job).results_format == "parquet"
    client.jobs.redis.delete(INFER_QUEUE)
    assert client.settings.results_format == "jsonl"
    assert resume(job, client=client).chunks == 2, "resumed, not refused as another submission"
    assert client.jobs.get(job).results_format == "parquet"


def test_a_list_whose_submission_stopped_continues_only_with_the_list(client: Client) -> None:
    uris = [f"images/{i}.jpg" for i in range(5)]

    def breaks_after_three() -> Iterator[str]:
        yield from uris[:3]
        raise RuntimeError("the caller's generator failed")

    job = f"half-{uuid.uuid4().hex[:6]}"
    with pytest.raises(RuntimeError):
        submit(breaks_after_three(), job=job, model="random:resnet18", client=client)
    record = client.jobs.get(job)
    assert record.submitting and "the caller's generator failed" in record.submit_error
    assert record.listed_images == 2, "the first chunk was recorded and sent"
    with pytest.raises(ConfigError, match="same list and job id"):
        resume(job, client=client)
    submit(uris, job=job, model="random:resnet18", client=client)
    record = client.jobs.get(job)
    assert (record.images, record.chunks, record.listing_done, record.submitting) == (
        5, 3, True, False)


def test_the_sweeper_sends_lost_chunks_again_without_a_person(redis_server: str,
                                                             tmp_path: Path) -> None:
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + "/14", tmp_path / "root",
                                 chunk_size=4, task_time_limit=10, visibility_timeout=12)
    client = Client(settings)
    client.jobs.redis.flushdb()
    uris = write_samples(client.storage, "photos/", 12, size=(64, 48), seed=5)
    job = submit("photos/", model="random:resnet18:classes=3", client=client)
    lost = client.jobs.redis.rpop(INFER_QUEUE)  # the oldest message vanishes, as in a crash
    assert lost is not None
    worker = WorkerProcess(settings, tmp_path / "worker.log", "sweeper").wait_ready()
    try:
        final = monitor.wait(client.jobs, client.storage, job, show_progress=False,
                             timeout_s=settings.visibility_timeout + margin_s(settings) + 60)
    finally:
        worker.stop()
    assert final.status == "done" and final.ok == 12
    assert_one_line_per_uri(client, job, uris)
    assert worker.log().count("sent again") == 1, "only the lost chunk, once"
    assert "chunk 0: sent more than" in worker.log()
