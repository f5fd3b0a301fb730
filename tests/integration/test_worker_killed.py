"""A worker SIGKILLed or SIGTERMed mid-job: another one finishes, one line per URI, none twice."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import submit
from rstream.shared.constants import INFER_TASK
from rstream.shared.jobs.results import part_uris
from rstream.shared.queue.app import make_app
from rstream.shared.settings import Settings
from rstream.shared.storage import join
from rstream.worker.samples import write_samples
from tests.pipeline import assert_one_line_per_uri, pipeline_settings
from tests.services import WorkerProcess


@dataclass
class Running:
    """A job of 120 photos whose first part is written, on one worker process."""

    settings: Settings
    client: Client
    uris: list[str]
    job: str
    first: WorkerProcess


def start_job(redis_server: str, tmp_path: Path, db: int, seed: int) -> Running:
    # A database of its own and a short visibility timeout: a dead worker's chunks come back
    # in seconds.
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + f"/{db}", tmp_path / "root",
                                 chunk_size=8, task_time_limit=10, visibility_timeout=12,
                                 max_batch=8)
    client = Client(settings)
    client.jobs.redis.flushdb()
    uris = write_samples(client.storage, "photos/", 120, seed=seed)
    first = WorkerProcess(settings, tmp_path / "first.log", "first").wait_ready()
    job = submit("photos/", model="random:resnet18:classes=10", client=client)
    deadline = time.monotonic() + 120
    while not part_uris(client.storage, settings.results, job):
        assert time.monotonic() < deadline, first.log()[-3000:]
        time.sleep(0.05)
    return Running(settings, client, uris, job, first)


def finish_on_a_second_worker(run: Running, tmp_path: Path) -> WorkerProcess:
    second = WorkerProcess(run.settings, tmp_path / "second.log", "second").wait_ready()
    try:
        monitor.wait(run.client.jobs, run.client.storage, run.job, show_progress=False,
                     timeout_s=180)
    finally:
        second.stop()
    assert_one_line_per_uri(run.client, run.job, run.uris)
    return second


def test_killed_worker_loses_no_image_and_reports_none_twice(
        redis_server: str, tmp_path: Path) -> None:
    run = start_job(redis_server, tmp_path, db=2, seed=11)
    settings, client, job, first = run.settings, run.client, run.job, run.first
    first.kill()
    assert client.jobs.get(job).status == "running", "killed before the job ended"
    second = finish_on_a_second_worker(run, tmp_path)
    record = client.jobs.get(job)
    assert (record.ok, record.failed, record.images) == (120, 0, 120)
    in_flight = tasks(first.log(), "received") - tasks(first.log(), "succeeded")
    assert in_flight, "the first worker died holding chunks"
    assert in_flight <= tasks(second.log(), "succeeded"), "its chunks were redelivered"
    assert client.storage.exists(join(settings.results, job, "manifest.json"))


def tasks(log: str, event: str) -> set[str]:
    """Task ids that a worker log says were ``received`` or ``succeeded``."""
    return set(re.findall(rf"Task {re.escape(INFER_TASK)}\[([^\]]+)\] {event}", log))


def test_sigterm_finishes_running_chunks_and_returns_the_rest(
        redis_server: str, tmp_path: Path) -> None:
    run = start_job(redis_server, tmp_path, db=9, seed=12)
    first = run.first
    assert first.stop() == 0, "a warm shutdown exits cleanly"
    finished = tasks(first.log(), "succeeded")
    assert tasks(first.log(), "received") <= finished, "every chunk it started, it finished"
    assert run.client.jobs.get(run.job).status == "running"
    second = finish_on_a_second_worker(run, tmp_path)
    assert not finished & tasks(second.log(), "received"), "nothing was done twice"


def test_a_worker_killed_holding_the_restore_lock_delays_redelivery_by_little(
        redis_server: str, tmp_path: Path) -> None:
    """kombu restores a dead worker's chunks under a lock; a worker SIGKILLed while it held
    that lock leaves it behind until it expires (kombu's default: 300 s). The lock is left
    here the way kombu's own Mutex takes it, with the expiry rstream configures, because the
    instant a worker holds it cannot be hit by a signal from a test."""
    run = start_job(redis_server, tmp_path, db=3, seed=13)
    options = make_app(run.settings).conf.broker_transport_options
    expire = int(options.get("unacked_mutex_expire", 300))  # kombu's default when unset
    run.first.kill()
    killed_at = time.monotonic()
    assert run.client.jobs.redis.set("unacked_mutex", "killed-worker", nx=True, ex=expire)
    outstanding = run.client.jobs.get(run.job).outstanding
    second = WorkerProcess(run.settings, tmp_path / "second.log", "second").wait_ready()
    try:
        monitor.wait(run.client.jobs, run.client.storage, run.job, show_progress=False,
                     timeout_s=run.settings.visibility_timeout + 60)
    finally:
        second.stop()
    took = time.monotonic() - killed_at
    assert outstanding > 0
    # Back within the visibility timeout (12 s) plus the lock's expiry and a sweep, not 300 s.
    assert took < run.settings.visibility_timeout + 45, took
    assert_one_line_per_uri(run.client, run.job, run.uris)
