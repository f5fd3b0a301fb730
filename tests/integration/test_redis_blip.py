"""Redis dies mid-job and comes back (append-only file on): nothing lost, nothing twice.

This test runs its own redis-server, with the append-only file fsynced on every write as
docker-compose.yml's Redis keeps one (tests/services.py, durable=True), and SIGKILLs it; the
session's Redis is never touched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import resume, submit
from rstream.shared.jobs.results import part_uris
from rstream.shared.jobs.store import DONE
from rstream.shared.storage import join
from rstream.worker.samples import write_samples
from tests.pipeline import assert_one_line_per_uri, pipeline_settings
from tests.services import RedisServer, ServiceUnavailable, WorkerProcess, service_unavailable


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path, durable=True).start()
    except ServiceUnavailable as exc:
        service_unavailable(str(exc))
    yield server
    server.stop()


def test_redis_killed_and_restarted_mid_job_loses_no_image(
        durable_redis: RedisServer, tmp_path: Path) -> None:
    settings = pipeline_settings(durable_redis.url, tmp_path / "root", chunk_size=8,
                                 max_batch=8, task_time_limit=10, visibility_timeout=12)
    client = Client(settings)
    uris = write_samples(client.storage, "photos/", 96, size=(320, 240), seed=21)
    # Under `rstream worker`, which restarts a worker process that dies: kombu sometimes gives
    # up on a lost broker connection and ends the process ("Unrecoverable error").
    worker = WorkerProcess(settings, tmp_path / "worker.log", "blip", supervised=True)
    worker.wait_ready()
    try:
        job = submit("photos/", model="random:resnet18:classes=10", client=client)
        while not part_uris(client.storage, settings.results, job):
            time.sleep(0.02)
        durable_redis.kill()
        time.sleep(2.0)  # chunks in flight try to record themselves while Redis is gone
        durable_redis.start()
        client = Client(settings)
        try:  # chunks held by the worker come back after the visibility timeout (12 s)
            monitor.wait(client.jobs, client.storage, job, show_progress=False, timeout_s=60)
        except TimeoutError:
            # Celery's Redis transport pops a message before it records it as unacked; a
            # Redis killed between the two loses that message. The job record knows which
            # chunks are not done: resuming the job sends exactly those again.
            assert monitor.stuck_reason(client.jobs, job, idle_after_s=30) is not None
            resume(job, client=client)
            monitor.wait(client.jobs, client.storage, job, show_progress=False, timeout_s=120)
    finally:
        worker.stop()
    record = client.jobs.get(job)
    # `wait` also returns when every outstanding chunk stalled: that is a failure here.
    assert record.status == DONE, f"job {record.status}, {record.stalled_chunks} chunk(s) " \
                                  f"stalled: {record.last_error}"
    assert_one_line_per_uri(client, job, uris)
    assert (record.ok, record.failed, record.images) == (96, 0, 96)
    assert client.storage.exists(join(settings.results, job, "manifest.json"))
