"""A Redis primary lost to a Sentinel failover mid-job: the worker rides it out without a
restart, and the job ends with one line per URI and true counts.

A private group (tests/services.py SentinelGroup: a primary, a replica, three Sentinels with
down-after-milliseconds 2000, quorum 2) on free loopback ports; the session's Redis is never
touched. The worker and the producer reach it only through the ``redis+sentinel://`` URL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import submit
from rstream.shared.jobs.manifest import manifest_uri
from rstream.shared.jobs.results import part_uris
from rstream.shared.jobs.store import DONE
from rstream.worker.samples import write_samples
from tests.pipeline import assert_one_line_per_uri, pipeline_settings
from tests.services import SentinelGroup, ServiceUnavailable, WorkerProcess, service_unavailable

IMAGES = 96


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path / "redis")
    try:
        group.start()
    except ServiceUnavailable as exc:
        group.stop()
        service_unavailable(str(exc))
    yield group
    group.stop()


def _done_chunks(client: Client, job: str) -> int:
    record = client.jobs.get(job)
    return record.chunks - record.outstanding


def test_a_sentinel_failover_mid_job_loses_no_image_and_counts_none_twice(
        sentinels: SentinelGroup, tmp_path: Path) -> None:
    # visibility 12 s: a chunk whose message or completion the failover lost comes back soon
    # (the sweeper re-sends a lost message after the timeout plus its 10 s margin).
    settings = pipeline_settings(sentinels.url, tmp_path / "root", chunk_size=8, max_batch=8,
                                 task_time_limit=10, visibility_timeout=12)
    client = Client(settings)
    uris = write_samples(client.storage, "photos/", IMAGES, size=(96, 72), seed=24)
    worker = WorkerProcess(settings, tmp_path / "worker.log", "failover").wait_ready()
    try:
        job = submit("photos/", model="random:resnet18:classes=10", client=client)
        deadline = time.monotonic() + 120
        while not part_uris(client.storage, settings.results, job):
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.02)
        before = _done_chunks(client, job)
        old_primary = sentinels.master_port()
        sentinels.kill_primary()
        killed = time.monotonic()
        new_primary = sentinels.wait_failover()
        promoted_after = time.monotonic() - killed
        while _done_chunks(client, job) <= before:  # the store rides the switch out
            assert time.monotonic() - killed < 60, worker.log()[-3000:]
            time.sleep(0.05)
        resumed_after = time.monotonic() - killed
        print(f"failover: replica promoted {promoted_after:.1f} s after the primary died; "
              f"scoring resumed after {resumed_after:.1f} s")
        monitor.wait(client.jobs, client.storage, job, show_progress=False, timeout_s=120)
        assert worker.process.poll() is None, "the worker rode the failover out, not restarted"
    finally:
        worker.stop()
    assert new_primary != old_primary
    record = client.jobs.get(job)
    assert record.status == DONE, f"job {record.status}: {record.last_error}"
    lines = assert_one_line_per_uri(client, job, uris)
    assert (record.ok, record.failed, record.images) == (len(lines), 0, IMAGES)
    manifest = json.loads(client.storage.read(manifest_uri(settings.results, job)))
    assert (manifest["images"], manifest["ok"], manifest["chunks"]) == (IMAGES, IMAGES,
                                                                        IMAGES // 8)
