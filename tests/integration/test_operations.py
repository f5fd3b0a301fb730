"""What an on-call engineer relies on, against real worker processes and a real Redis:

- /readyz through a model load (a default model that is not published yet, then is) and a
  broker outage (Redis stopped and started again), while /healthz stays green;
- a worker started by hand (``celery -A rstream.worker.app worker``) runs the thread pool, logs
  rstream's own lines as JSON with the chunk fields and a "ready" line, and sends the task
  events that Flower shows;
- ``rstream exporter``: queue depth, the age of the chunk next in line, dead letters and live
  workers, Redis down and back, and its own JSON log lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import submit
from rstream.shared.models.registry import Registry
from rstream.shared.queue import deadletters
from rstream.shared.queue.app import make_app
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.worker.samples import write_samples
from tests.pipeline import WAIT_S, pipeline_settings, save_tiny_model, write_dataset
from tests.services import (
    REPO,
    RedisServer,
    ServiceUnavailable,
    WorkerProcess,
    free_port,
    http_get,
    sample,
    scrape,
    service_unavailable,
)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that this test may stop and start again (same port)."""
    try:
        (tmp_path / "redis").mkdir()
        server = RedisServer(tmp_path / "redis").start()
    except ServiceUnavailable as exc:
        service_unavailable(str(exc))
    yield server
    server.stop()


def until(what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    """Poll ``check`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # the endpoint is not up (yet, or any more)
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last!r})")


def probe_says(url: str, status: int, key: str, starts: str) -> Callable[[], bool]:
    def check() -> bool:
        got, body = http_get(url)
        return got == status and str(body.get(key, "")).startswith(starts)

    return check


def test_readyz_follows_the_model_load_and_a_broker_outage_while_healthz_stays_green(
        own_redis: RedisServer, tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    settings = pipeline_settings(own_redis.url, tmp_path / "root", model="ops",
                                 metrics_port=free_port())
    url = f"http://127.0.0.1:{settings.metrics_port}"
    worker = WorkerProcess(settings, tmp_path / "worker.log", "ops").wait_ready()
    try:
        # The default model has no production version yet: alive, not ready, and why.
        until("readyz names the model that cannot load",
              probe_says(f"{url}/readyz", 503, "model", "cannot load ops: NotFoundError"))
        assert http_get(f"{url}/healthz")[0] == 200
        _, ready = http_get(f"{url}/readyz")
        assert (ready["broker"], ready["consumer"]) == ("connected", "consuming")

        version = save_tiny_model(settings, "ops")
        Registry(Storage(settings), settings.models).promote("ops", version.partition("@")[2])
        until("readyz once the model loaded",
              probe_says(f"{url}/readyz", 200, "model", "loaded ops"))
        metrics = scrape(f"{url}/metrics")
        assert sample(metrics, "rstream_model_loads_total", model=version, kind="load",
                      result="ok", reason="") == 1
        assert sample(metrics, "rstream_model_loads_total", model="ops", kind="load",
                      result="failed", reason="NotFoundError") >= 1
        assert sample(metrics, "rstream_model_info", model=version, device="cpu",
                      backend="eager", precision="fp32") == 1

        own_redis.stop()  # the broker goes away
        until("readyz red while Redis is down",
              probe_says(f"{url}/readyz", 503, "broker", "RSTREAM_REDIS_URL="))
        assert http_get(f"{url}/healthz")[0] == 200, "a broker outage is not a dead worker"
        own_redis.start()
        until("readyz green once Redis is back",
              probe_says(f"{url}/readyz", 200, "broker", "connected"))
        assert http_get(f"{url}/healthz")[0] == 200
    finally:
        worker.stop()


class Events:
    """Celery task events as Flower receives them (its own source: the event receiver)."""

    def __init__(self, settings: Settings) -> None:
        self.seen: list[dict[str, Any]] = []
        self._connection = Connection(settings.redis_url)
        self._receiver = make_app(settings).events.Receiver(
            self._connection, handlers={"*": self.seen.append})
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> Events:
        self._thread.start()
        time.sleep(1.0)  # subscribed before anything is sent
        return self

    def __exit__(self, *exc: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(10)
        self._connection.release()

    def kinds(self, uuid: str) -> set[str]:
        return {event["type"] for event in list(self.seen) if event.get("uuid") == uuid}


def test_a_worker_started_by_hand_logs_json_with_chunk_fields_and_sends_task_events(
        redis_server: str, tmp_path: Path) -> None:
    url = redis_server.rsplit("/", 1)[0] + "/13"  # its own database: its own queues
    settings = pipeline_settings(url, tmp_path / "root", log_format="json",
                                 metrics_port=free_port())
    model = save_tiny_model(settings)
    uris = write_dataset(Storage(settings), "byhand/", good=22)  # 2 chunks of 16
    worker = WorkerProcess(settings, tmp_path / "worker.log", "byhand", by_hand=True)
    try:
        worker.wait_ready()
        with Events(settings) as events:
            client = Client(settings)
            job = submit("byhand/", model=model, client=client)
            monitor.wait(client.jobs, client.storage, job, show_progress=False,
                         timeout_s=WAIT_S)
            # Two threads serve the two chunks at once: either may finish last.
            until("both chunks' events", lambda: all(
                "task-succeeded" in events.kinds(f"{job}:{chunk}:0") for chunk in (0, 1)),
                timeout_s=20)
            for chunk in (0, 1):
                assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= \
                    events.kinds(f"{job}:{chunk}:0"), chunk
        metrics = scrape(f"http://127.0.0.1:{settings.metrics_port}/metrics")
        assert sample(metrics, "rstream_images_total", model=model, result="ok", reason="") \
            == len(uris) - 10, "scored in this process: the thread pool, not prefork children"
    finally:
        worker.stop()
    # Celery writes one notice outside logging, at the shutdown signal; all else is JSON.
    lines = [line for line in worker.log().splitlines()
             if line not in ("", "worker: Warm shutdown (MainProcess)")]
    records = [json.loads(line) for line in lines]  # raises on a line that is not JSON
    assert all(isinstance(record, dict) for record in records)
    [ready] = [r for r in records if r["message"].startswith("rstream worker byhand@")]
    assert " ready: queues " in ready["message"] and "thread pool of 2" in ready["message"]
    assert ready["worker"].startswith("byhand@")
    chunk_lines = [r for r in records
                   if r.get("job") == job and r["logger"] == "rstream.worker.tasks"]
    assert sorted(r["chunk"] for r in chunk_lines) == [0, 1]
    assert all(r["model"] == model and r["worker"] == ready["worker"] for r in chunk_lines)


class Exporter:
    """``rstream exporter`` as a subprocess with the test's settings; its log in a file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
        env.update(settings.as_env())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rstream.producer.cli", "exporter", "--port", str(self.port)],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        until("the exporter answers", lambda: http_get(f"{self.url}/healthz")[0] == 200,
              timeout_s=30)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)


def test_the_exporter_serves_queue_depth_and_the_oldest_chunks_age(
        own_redis: RedisServer, tmp_path: Path) -> None:
    settings = pipeline_settings(own_redis.url, tmp_path / "root", chunk_size=2,
                                 log_format="json")
    client = Client(settings)
    write_samples(client.storage, "queued/", 6, size=(32, 24))
    submit("queued/", model="random:resnet18:classes=3", client=client)  # 3 chunks, no worker
    deadletters.record(client.jobs.redis, "a refused message, for the count", raw=b"x")
    time.sleep(2.2)
    exporter = Exporter(settings, tmp_path / "exporter.log")
    try:
        metrics = scrape(f"{exporter.url}/metrics")
        assert sample(metrics, "rstream_redis_up") == 1
        assert sample(metrics, "rstream_queue_depth", queue="infer") == 3
        assert sample(metrics, "rstream_queue_depth", queue="train") == 0
        age = sample(metrics, "rstream_queue_oldest_age_seconds", queue="infer")
        assert 2.0 <= age < 120, age
        assert sample(metrics, "rstream_queue_unacked_messages") == 0
        assert sample(metrics, "rstream_workers", queue="infer") == 0
        assert sample(metrics, "rstream_dead_letters") == 1
        assert http_get(f"{exporter.url}/readyz")[0] == 200
        assert http_get(f"{exporter.url}/")[0] == 404

        own_redis.stop()
        metrics = scrape(f"{exporter.url}/metrics")
        assert sample(metrics, "rstream_redis_up") == 0
        assert not any(name == "rstream_queue_depth" for name, _ in metrics)
        status, ready = http_get(f"{exporter.url}/readyz")
        assert status == 503 and "RSTREAM_REDIS_URL=" in ready["redis"]
        assert http_get(f"{exporter.url}/healthz")[0] == 200
        own_redis.start()  # persistence off: it comes back empty
        metrics = scrape(f"{exporter.url}/metrics")
        assert sample(metrics, "rstream_redis_up") == 1
        assert sample(metrics, "rstream_queue_depth", queue="infer") == 0
        assert sample(metrics, "rstream_queue_oldest_age_seconds", queue="infer") == 0
    finally:
        code = exporter.stop()
    assert code == 0, exporter.log_path.read_text()
    records = [json.loads(line) for line in exporter.log_path.read_text().splitlines()]
    assert any(r["logger"] == "rstream.producer.exporter" and exporter.url in r["message"]
               for r in records), "the CLI logs in the worker's format"
