"""The late-writer rule end to end (#24 point 3), on two real ``celery worker`` processes.

Worker 1 is SIGSTOPped in the middle of a chunk: one of its images is a named pipe, so its
read blocks until the test writes to it, and the test stops the worker once the read has
begun. Worker 2 gets the chunk after the visibility timeout, redoes it and ends the job.
Worker 1 is then SIGCONTed and its read gets bytes that are no image, so its lines differ
from those of worker 2 (an error line where worker 2 has a prediction): its late attempt must be
refused and the part, the counts and the manifest stay worker 2's.
"""

from __future__ import annotations

import errno
import os
import signal
import time
import uuid
from pathlib import Path

from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.shared.constants import INFER_QUEUE, INFER_TASK
from rstream.shared.jobs.inputs import InputRecord
from rstream.shared.jobs.manifest import manifest_uri
from rstream.shared.jobs.results import count_lines, part_uri, read_part
from rstream.shared.queue.app import make_app
from rstream.shared.queue.messages import ChunkMessage, task_id
from rstream.shared.settings import Settings
from rstream.worker.samples import write_samples
from tests.pipeline import assert_one_line_per_uri, pipeline_settings
from tests.services import WorkerProcess

MODEL = "random:resnet18:classes=10"
IMAGES = 8


def test_a_worker_paused_mid_chunk_past_the_visibility_timeout_cannot_rewrite_the_part(
        redis_server: str, tmp_path: Path) -> None:
    # A database of its own; a short visibility timeout: the paused chunk comes back in
    # seconds.
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + "/8", tmp_path / "root",
                                 chunk_size=IMAGES, task_time_limit=10, visibility_timeout=12,
                                 max_batch=IMAGES)
    client = Client(settings)
    client.jobs.redis.flushdb()
    uris = write_samples(client.storage, "photos/", IMAGES, seed=21)
    pipe = client.storage.local.path(uris[3])
    photo = pipe.read_bytes()
    pipe.unlink()
    os.mkfifo(pipe)
    first = WorkerProcess(settings, tmp_path / "first.log", "first").wait_ready()
    second: WorkerProcess | None = None
    writer: int | None = None
    try:
        job = send_one_chunk_job(client, settings, uris)
        writer = open_when_read(pipe, first)  # worker 1 is reading the chunk's 4th image
        first.process.send_signal(signal.SIGSTOP)
        whole = pipe.with_suffix(".tmp")
        whole.write_bytes(photo)
        os.replace(whole, pipe)  # worker 2 reads the photo; worker 1 holds the pipe
        second = WorkerProcess(settings, tmp_path / "second.log", "second").wait_ready()
        monitor.wait(client.jobs, client.storage, job, show_progress=False, timeout_s=60)
        part = client.storage.read(part_uri(settings.results, job, 0))
        manifest = client.storage.read(manifest_uri(settings.results, job))
        first.process.send_signal(signal.SIGCONT)
        os.write(writer, b"worker 1 reads this, which is no image\n")
        os.close(writer)
        writer = None
        wait_for_log(first, f"Task {INFER_TASK}[{task_id(job, 0, 0)}] succeeded")
        assert first.stop() == 0
    finally:
        if writer is not None:
            os.close(writer)
        if first.process.poll() is None:  # never leave a stopped worker behind
            first.process.send_signal(signal.SIGCONT)
            first.kill()
        if second is not None:
            second.stop()
    lines = assert_one_line_per_uri(client, job, uris)
    assert client.storage.read(part_uri(settings.results, job, 0)) == part, "worker 2's part"
    assert client.storage.read(manifest_uri(settings.results, job)) == manifest
    counted = count_lines(lines)
    assert (counted["ok"], counted["failed"]) == (IMAGES, 0), "worker 2 read the photo"
    record = client.jobs.get(job)
    assert (record.status, record.ok, record.failed) == ("done", IMAGES, 0)
    assert dict(client.jobs.chunk_counts(job))[0]["models"] == counted["models"]
    written = read_part(client.storage, part_uri(settings.results, job, 0))
    assert count_lines(written) == counted
    assert f'"ok": {IMAGES}' in manifest.decode() and '"failed": 0' in manifest.decode()
    assert "WARNING" in refusal(first) and "its lines differ" in refusal(first)
    assert "succeeded" in second.log() and not refusal(second), "worker 2 redid the chunk"


def send_one_chunk_job(client: Client, settings: Settings, uris: list[str]) -> str:
    """A job of one chunk, recorded and sent as ``rstream submit`` would (by hand: a listing
    skips the named pipe, which is no regular file)."""
    job = f"late-{uuid.uuid4().hex[:6]}"
    client.jobs.create(job, model=MODEL, results=settings.results, source="photos/",
                       chunk_size=IMAGES)
    InputRecord(client.storage, settings.results, job).write_segment(0, [uris])
    client.jobs.record_listed(job, 1, len(uris), uris[-1], done=True)
    client.jobs.mark_sent(job, 0, 0, len(uris))
    message = ChunkMessage(job, 0, uris, MODEL, settings.results)
    make_app(settings).send_task(INFER_TASK, kwargs={"message": message.to_dict()},
                                 queue=INFER_QUEUE, task_id=message.task_id)
    client.jobs.end_submit(job)
    return job


def open_when_read(pipe: Path, worker: WorkerProcess, timeout_s: float = 60.0) -> int:
    """The write end of ``pipe``, opened once a reader has it open (ENXIO until then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            assert exc.errno == errno.ENXIO, exc
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return fd


def refusal(worker: WorkerProcess) -> str:
    """The log line of the worker's refused late write ("" if none)."""
    return next((line for line in worker.log().splitlines() if "late write refused" in line),
                "")


def wait_for_log(worker: WorkerProcess, text: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in worker.log():
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.05)
