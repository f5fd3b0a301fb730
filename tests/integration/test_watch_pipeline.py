"""Watch mode end to end: the watcher and the workers as real processes, a durable
redis-server of the test's own (append-only file fsynced on every write), moto's S3 over
HTTP or local storage; images land while the watcher runs, and watchers, a worker and Redis
are killed on the way. At the end every image has exactly one line in exactly one window,
and the windows' manifests add up.

The watcher is ``python -m rstream.producer.cli watch``; where a test must kill it at one precise
point (between reading stream entries and recording them), it runs through
tests/watch_hook.py, the same command line with a pause at that point.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.watch.record import WatchRecord
from rstream.shared.constants import INGEST_GROUP, INGEST_STREAM_KEY
from rstream.shared.jobs.manifest import manifest_uri
from rstream.shared.jobs.store import DONE, Job
from rstream.shared.queue import deadletters
from rstream.shared.settings import Settings
from rstream.worker.samples import variants
from tests.pipeline import bad_images, pipeline_settings, save_tiny_model
from tests.services import (
    RedisServer,
    ServiceUnavailable,
    WatcherProcess,
    WorkerProcess,
    service_unavailable,
)

WAIT_S = 240.0


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path / "redis", durable=True)
        (tmp_path / "redis").mkdir()
        server.start()
    except ServiceUnavailable as exc:
        service_unavailable(str(exc))
    yield server
    server.stop()


def small_images(count: int, seed: int) -> list[bytes]:
    return [blob for _, blob in variants(count, size=(80, 60), seed=seed)]


def window_jobs(client: Client, watch: str) -> list[Job]:
    return sorted((job for job in client.jobs.recent(1000) if job.watch == watch),
                  key=lambda job: job.id)


def wait_until_scored(client: Client, watch: str, images: int,
                      timeout_s: float = WAIT_S) -> list[Job]:
    """The watch's window jobs once every window is closed and done and they hold
    ``images`` images."""
    deadline = time.monotonic() + timeout_s
    record = WatchRecord(client.jobs.redis, watch)
    while True:
        jobs = window_jobs(client, watch)
        if (not record.open_windows() and jobs and all(j.status == DONE for j in jobs)
                and sum(j.listed_images for j in jobs) >= images):
            return jobs
        if time.monotonic() > deadline:
            raise TimeoutError(f"not scored after {timeout_s} s: open windows "
                               f"{record.open_windows()}, jobs "
                               f"{[(j.id, j.status, j.processed, j.listed_images) for j in jobs]}")
        time.sleep(0.5)


def check_windows(client: Client, jobs: list[Job], good: set[str], bad: set[str],
                  model: str) -> None:
    """Every URI has exactly one line in exactly one window; the bad ones an error line; each
    window's manifest counts its own lines, and together they count every image."""
    seen: Counter[str] = Counter()
    totals = Counter[str]()
    for job in jobs:
        lines = list(monitor.results(client.jobs, client.storage, job.id))
        seen.update(line["uri"] for line in lines)
        manifest = json.loads(client.storage.read(manifest_uri(job.results, job.id)))
        ok = sum(1 for line in lines if line["ok"])
        assert (manifest["images"], manifest["ok"], manifest["failed"]) == (
            len(lines), ok, len(lines) - ok) == (job.listed_images, job.ok, job.failed), job.id
        totals.update({"images": manifest["images"], "ok": manifest["ok"],
                       "failed": manifest["failed"]})
        for line in lines:
            if line["uri"] in bad:
                assert not line["ok"] and line["error"]["message"], line
            else:
                assert line["ok"] and line["model"] == model, line
    twice = sorted(uri for uri, n in seen.items() if n > 1)
    assert not twice, f"{len(twice)} images have more than one line: {twice[:5]}"
    assert set(seen) == good | bad, (sorted(good | bad - set(seen))[:5],
                                     sorted(set(seen) - good - bad)[:5])
    assert totals == Counter({"images": len(good) + len(bad), "ok": len(good),
                              "failed": len(bad)})


BURSTS, BURST = 8, 60  # images landing on S3: 8 bursts of 60


def test_images_landing_in_bursts_are_each_scored_once_through_kills(
        durable_redis: RedisServer, moto_server: str, s3_admin: Any, tmp_path: Path) -> None:
    """480 images (24 of them bad) land on S3 in 8 bursts over about 25 s while the
    watcher runs; the watcher is SIGKILLed twice (and started again) and one of the two
    workers once. Windows of 12 s, so the images spread over several window jobs."""
    bucket = f"watch-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=bucket)
    settings = pipeline_settings(durable_redis.url, tmp_path / "root",
                                 s3_endpoint_url=moto_server, allowed_buckets=(bucket,),
                                 s3_max_attempts=3, chunk_size=16, task_time_limit=10,
                                 visibility_timeout=12, max_pending_chunks=2)
    client = Client(settings)
    model = save_tiny_model(settings)
    workers = [WorkerProcess(settings, tmp_path / f"worker-{i}.log", f"chaos{i}")
               for i in range(2)]
    for worker in workers:
        worker.wait_ready()
    args = [f"s3://{bucket}/incoming/", "--model", model, "--name", "chaos", "--interval",
            "1", "--window", "12"]
    watcher = WatcherProcess(settings, tmp_path / "watcher-0.log", args).wait_for("watching")
    photos, broken = small_images(50, seed=3), bad_images()
    good: set[str] = set()
    bad: set[str] = set()
    rng = random.Random(15)
    kills = 0
    try:
        with ThreadPoolExecutor(8) as pool:
            for burst in range(BURSTS):
                batch = []
                for i in range(burst * BURST, burst * BURST + BURST):
                    if i % 20 == 19:
                        name, blob = broken[i // 20 % len(broken)]
                        key, target = f"incoming/bad-{i:04d}-{name}", bad
                    else:
                        key, blob, target = f"incoming/img-{i:04d}.jpg", photos[i % 50], good
                    batch.append((key, blob))
                    target.add(f"s3://{bucket}/{key}")
                list(pool.map(lambda kv: s3_admin.put_object(Bucket=bucket, Key=kv[0],
                                                             Body=kv[1]), batch))
                if burst in (2, 5):  # mid-pass, most likely: listing, recording or sending
                    time.sleep(rng.uniform(0.3, 1.5))
                    watcher.kill()
                    kills += 1
                    watcher = WatcherProcess(settings, tmp_path / f"watcher-{kills}.log",
                                             args).wait_for("watching")
                if burst == 4:
                    workers[0].kill()
                time.sleep(2.5)
        jobs = wait_until_scored(client, "chaos", BURSTS * BURST)
        assert watcher.stop() == 0, watcher.log()[-3000:]
    finally:
        watcher.kill()
        for worker in workers:
            worker.stop()
    assert len(jobs) >= 2, "the images spread over several windows"
    check_windows(client, jobs, good, bad, model)
    assert "Traceback" not in watcher.log()


def test_stream_entries_are_each_scored_once_through_kills_and_a_redis_restart(
        durable_redis: RedisServer, tmp_path: Path) -> None:
    """300 URIs announced on rstream:ingest:landing, some bad images, some announced twice,
    one missing object and one entry without a URI. The first watcher is SIGKILLed after it
    read entries and before it recorded them; the second after it recorded chunks and before
    it sent them; Redis is SIGKILLed and started again while the third runs."""
    settings = pipeline_settings(durable_redis.url, tmp_path / "root", chunk_size=8,
                                 task_time_limit=10, visibility_timeout=12)
    client = Client(settings)
    model = save_tiny_model(settings)
    photos, broken = small_images(30, seed=4), bad_images()
    good, bad, order = set(), set(), []
    for i in range(290):
        uri = f"landing/img-{i:04d}.jpg"
        client.storage.write(uri, photos[i % 30])
        good.add(uri)
        order.append(uri)
    for name, blob in broken:
        uri = f"landing/bad-{name}"
        client.storage.write(uri, blob)
        bad.add(uri)
        order.insert(len(order) // 2, uri)
    bad.add("landing/never-written.jpg")
    order.insert(200, "landing/never-written.jpg")
    order[150:150] = order[10:20]  # announced twice: still one line each
    key = INGEST_STREAM_KEY.format(name="landing")

    def announce(uris: list[str]) -> None:
        for uri in uris:
            client.jobs.redis.xadd(key, {"uri": uri})

    worker = WorkerProcess(settings, tmp_path / "worker.log", "stream", supervised=True)
    worker.wait_ready()
    args = ["--stream", "landing", "--model", model, "--window", "10"]
    watcher: WatcherProcess | None = None
    try:
        marker = tmp_path / "paused-read"
        watcher = WatcherProcess(settings, tmp_path / "watcher-0.log", args, hook="record:3",
                                 marker=marker)
        announce(order[:60])
        wait_for_file(marker)
        pending = client.jobs.redis.xpending(key, INGEST_GROUP)["pending"]
        assert pending > 0, "killed with entries read and not recorded"
        watcher.kill()

        marker = tmp_path / "paused-send"
        watcher = WatcherProcess(settings, tmp_path / "watcher-1.log", args, hook="send:3",
                                 marker=marker)
        announce(order[60:120])
        wait_for_file(marker)
        assert any(job.listed_chunks > job.chunks for job in window_jobs(client, "landing")), \
            "killed with chunks recorded and not sent"
        watcher.kill()

        watcher = WatcherProcess(settings, tmp_path / "watcher-2.log", args)
        watcher.wait_for("watching")
        announce(order[120:200])
        time.sleep(2.0)
        durable_redis.kill()
        time.sleep(2.0)
        durable_redis.start()
        announce(order[200:])
        client.jobs.redis.xadd(key, {"path": "landing/img-0001.jpg"})  # no uri: refused
        jobs = wait_until_scored(client, "landing", len(good | bad))
        assert watcher.stop() == 0, watcher.log()[-3000:]
    finally:
        if watcher is not None:
            watcher.kill()
        worker.stop()
    check_windows(client, jobs, good, bad, model)
    r = client.jobs.redis
    assert r.xlen(key) == 0 and r.xpending(key, INGEST_GROUP)["pending"] == 0
    refused = [e for e in deadletters.recent(r, 10) if e["queue"] == "ingest:landing"]
    assert len(refused) == 1 and "no uri field" in refused[0]["reason"]


def wait_for_file(path: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} not written after {timeout_s} s"
        time.sleep(0.05)


def test_an_overwritten_image_is_scored_again_and_a_deleted_one_is_no_error(
        durable_redis: RedisServer, tmp_path: Path) -> None:
    settings: Settings = pipeline_settings(durable_redis.url, tmp_path / "root", chunk_size=4)
    client = Client(settings)
    model = save_tiny_model(settings)
    photos = small_images(3, seed=5)
    client.storage.write("incoming/a.jpg", photos[0])
    client.storage.write("incoming/b.jpg", photos[1])
    worker = WorkerProcess(settings, tmp_path / "worker.log", "rewrite").wait_ready()
    watcher = WatcherProcess(settings, tmp_path / "watcher.log",
                             ["incoming/", "--model", model, "--interval", "0.5"])
    try:
        watcher.wait_for("watching")
        wait_processed(client, "incoming", 2)
        client.storage.write("incoming/a.jpg", b"no longer an image")  # a new ETag
        client.storage.delete("incoming/b.jpg")
        client.storage.write("incoming/c.jpg", photos[2])
        wait_processed(client, "incoming", 4)
        time.sleep(2.0)  # four more passes: nothing else is sent
        assert sum(j.listed_images for j in window_jobs(client, "incoming")) == 4
        assert watcher.process.poll() is None, "the deletion did not stop the watcher"
        assert watcher.stop() == 0
    finally:
        watcher.kill()
        worker.stop()
    lines = [line for job in window_jobs(client, "incoming")
             for line in monitor.results(client.jobs, client.storage, job.id)]
    by_uri: dict[str, list[bool]] = {}
    for line in lines:
        by_uri.setdefault(line["uri"], []).append(line["ok"])
    assert by_uri == {"incoming/a.jpg": [True, False], "incoming/b.jpg": [True],
                      "incoming/c.jpg": [True]}
    assert "ERROR" not in watcher.log() and "Traceback" not in watcher.log()


def wait_processed(client: Client, watch: str, images: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(j.processed for j in window_jobs(client, watch)) < images:
        assert time.monotonic() < deadline, [
            (j.id, j.processed, j.listed_images) for j in window_jobs(client, watch)]
        time.sleep(0.2)
