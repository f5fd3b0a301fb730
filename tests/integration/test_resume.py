"""A job that lost chunk messages (a Redis crash can lose one) is noticed and resumed."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from producer import monitor
from producer.submit import Client, resume, submit
from shared.celery_app import queued
from shared.constants import INFER_QUEUE, JOB_KEY
from shared.errors import ConfigError
from tests.integration.test_pipeline import pipeline_settings


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

    assert resume(job, client=client) == 3
    assert queued(client.jobs.redis, INFER_QUEUE) == 3
    record = client.jobs.get(job)
    assert (record.images, record.chunks, record.outstanding) == (5, 3, 3), "counted once"
    assert monitor.stuck_reason(client.jobs, job, idle_after_s=60) is None


def test_a_job_submitted_as_a_list_cannot_be_resumed(client: Client) -> None:
    job = submit(["images/a.jpg"], model="random:resnet18", client=client)
    with pytest.raises(ConfigError, match="same list and job id"):
        resume(job, client=client)
