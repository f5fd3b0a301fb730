"""A worker SIGKILLed or SIGTERMed (drained) mid-job: another one finishes, one line per URI,
none twice."""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import submit
from rstream.shared.constants import INFER_QUEUE, INFER_TASK
from rstream.shared.jobs.inputs import InputRecord
from rstream.shared.jobs.results import part_uris
from rstream.shared.queue.app import make_app
from rstream.shared.queue.messages import ChunkMessage, task_id
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
    held: tuple[str, list[str]] = ("", [])  # a job whose chunks the worker holds, not started


def start_job(redis_server: str, tmp_path: Path, db: int, seed: int,
              before_submit: Callable[[Running], tuple[str, list[str]]] | None = None
              ) -> Running:
    # A database of its own and a short visibility timeout: a dead worker's chunks come back
    # in seconds.
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + f"/{db}", tmp_path / "root",
                                 chunk_size=8, task_time_limit=10, visibility_timeout=12,
                                 max_batch=8)
    client = Client(settings)
    client.jobs.redis.flushdb()
    uris = write_samples(client.storage, "photos/", 120, seed=seed)
    first = WorkerProcess(settings, tmp_path / "first.log", "first").wait_ready()
    run = Running(settings, client, uris, "", first)
    if before_submit is not None:
        run.held = before_submit(run)
    run.job = submit("photos/", model="random:resnet18:classes=10", client=client)
    deadline = time.monotonic() + 120
    while not part_uris(client.storage, settings.results, run.job):
        assert time.monotonic() < deadline, first.log()[-3000:]
        time.sleep(0.05)
    return run


def finish_on_a_second_worker(run: Running, tmp_path: Path, also: str = "") -> WorkerProcess:
    second = WorkerProcess(run.settings, tmp_path / "second.log", "second").wait_ready()
    try:
        for job in filter(None, (run.job, also)):
            monitor.wait(run.client.jobs, run.client.storage, job, show_progress=False,
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
    # A chunk the first worker completed in the store just before the kill, without
    # acknowledging it, needs no second run: its redelivery may come after the job ended.
    in_flight = tasks(first.log(), "received") - tasks(first.log(), "succeeded")
    assert in_flight, "the first worker died holding chunks"
    unfinished = {task for task in in_flight
                  if not client.jobs.is_done(*ChunkMessage.parse_task_id(task) or (job, -1, 0))}
    second = finish_on_a_second_worker(run, tmp_path)
    record = client.jobs.get(job)
    assert (record.ok, record.failed, record.images) == (120, 0, 120)
    assert unfinished, "the first worker died in the middle of a chunk"
    assert unfinished <= tasks(second.log(), "succeeded"), "its chunks were redelivered"
    assert client.storage.exists(join(settings.results, job, "manifest.json"))


def tasks(log: str, event: str) -> set[str]:
    """Task ids that a worker log says were ``received`` or ``succeeded``."""
    return set(re.findall(rf"Task {re.escape(INFER_TASK)}\[([^\]]+)\] {event}", log))


def test_sigterm_drains_running_chunks_finish_and_held_ones_go_back_at_once(
        redis_server: str, tmp_path: Path) -> None:
    """A scale-down: SIGTERM in the middle of a job. The chunk that runs finishes and its
    lines are written; the chunks the worker held without starting them (retries waiting out
    their countdown) are back in the queue within a second; a second worker completes both
    jobs, no image scored twice, none missing."""
    run = start_job(redis_server, tmp_path, db=9, seed=12,
                    before_submit=lambda r: _job_with_retries_waiting(r, countdown_s=8))
    held_job, held_uris = run.held
    first = run.first
    assert held_ids(held_job) <= tasks(first.log(), "received"), "held before the job runs"
    first.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    while not held_ids(held_job) <= queued_ids(run.client):
        assert time.monotonic() - signalled < 1.0, "held chunks not back in the queue in 1 s"
        time.sleep(0.01)
    back_after = time.monotonic() - signalled
    assert first.stop() == 0, "a drained worker exits cleanly"
    finished = tasks(first.log(), "succeeded")
    started = tasks(first.log(), "received") - held_ids(held_job)
    assert started <= finished, "every chunk it started, it finished"
    assert not finished & held_ids(held_job), "the held ones it did not run"
    assert run.client.jobs.get(run.job).status == "running"
    second = finish_on_a_second_worker(run, tmp_path, also=held_job)
    assert_one_line_per_uri(run.client, held_job, held_uris)
    assert held_ids(held_job) <= tasks(second.log(), "succeeded")
    assert not finished & tasks(second.log(), "received"), "nothing was done twice"
    print(f"held chunks back in the queue {back_after * 1000:.0f} ms after SIGTERM")


def _job_with_retries_waiting(run: Running, *, countdown_s: int) -> tuple[str, list[str]]:
    """A second job of two chunks whose messages carry a countdown, as a retry's do: the
    worker holds them, scheduled, without starting them."""
    client, settings = run.client, run.settings
    job, model = f"held-{uuid.uuid4().hex[:6]}", "random:resnet18:classes=10"
    uris = write_samples(client.storage, "held/", 16, seed=14)
    client.jobs.create(job, model=model, results=settings.results, source="held/",
                       chunk_size=8)
    chunks = [uris[:8], uris[8:]]
    InputRecord(client.storage, settings.results, job).write_segment(0, chunks)
    client.jobs.record_listed(job, 2, 16, uris[-1], done=True)
    app = make_app(settings)
    for number, chunk in enumerate(chunks):
        client.jobs.mark_sent(job, number, 0, len(chunk))
        message = ChunkMessage(job, number, chunk, model, settings.results)
        app.send_task(INFER_TASK, kwargs={"message": message.to_dict()}, queue=INFER_QUEUE,
                      task_id=message.task_id, countdown=countdown_s)
    client.jobs.end_submit(job)
    deadline = time.monotonic() + 60
    while not held_ids(job) <= tasks(run.first.log(), "received"):
        assert time.monotonic() < deadline, run.first.log()[-3000:]
        time.sleep(0.05)
    return job, uris


def held_ids(job: str) -> set[str]:
    return {task_id(job, 0, 0), task_id(job, 1, 0)}


def queued_ids(client: Client) -> set[str]:
    """Task ids of the messages waiting in the infer queue now."""
    return {json.loads(raw)["headers"]["id"]
            for raw in client.jobs.redis.lrange(INFER_QUEUE, 0, -1)}


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
