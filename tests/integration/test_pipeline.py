"""The whole pipeline with real parts: redis-server, moto's S3 server, celery worker processes.

A small registry model (resnet18, 10 classes, 64 px input) keeps the forward pass cheap; the
pipeline under test is the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from kombu import Connection
from kombu import Producer as KombuProducer

from rstream.producer import monitor
from rstream.producer.cli import main as cli_main
from rstream.producer.client import Client
from rstream.producer.submit import retry, submit
from rstream.shared.constants import INFER_QUEUE, INFER_TASK
from rstream.shared.errors import NotFoundError, PermanentError
from rstream.shared.jobs.manifest import manifest_uri
from rstream.shared.jobs.results import part_uri, part_uris
from rstream.shared.jobs.store import CANCELLED, DONE
from rstream.shared.models.registry import Registry
from rstream.shared.queue.inspect import queued
from rstream.shared.settings import Settings
from rstream.shared.storage import join
from tests.pipeline import (
    WAIT_S,
    assert_one_line_per_uri,
    good_images,
    pipeline_settings,
    save_tiny_model,
    write_dataset,
)
from tests.services import (
    WorkerProcess,
    free_port,
    http_get,
    sample,
    scrape,
)


@pytest.fixture(scope="module")
def bucket(moto_server: str) -> str:
    name = f"pipeline-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client("s3", endpoint_url=moto_server,
                                   region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def env(redis_server: str, moto_server: str, bucket: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    """Settings, a tiny model in the registry, and one running worker for the module."""
    root = tmp_path_factory.mktemp("root")
    # A database of its own: no other test's worker can take a chunk of these jobs (the
    # metrics test counts what this worker scored).
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + "/10", root,
                                 s3_endpoint_url=moto_server,
                                 allowed_buckets=(bucket,), s3_max_attempts=3,
                                 metrics_port=free_port(), backend="auto")
    model = save_tiny_model(settings)
    worker = WorkerProcess(settings, root.parent / "worker.log", "pipeline").wait_ready()
    yield settings, model
    worker.stop()


def run_job(client: Client, source: str, model: str, job: str | None = None) -> str:
    job = submit(source, job=job, model=model, client=client)
    monitor.wait(client.jobs, client.storage, job, show_progress=False, timeout_s=WAIT_S)
    return job


def check_job(client: Client, job: str, uris: list[str], model: str) -> list[dict[str, Any]]:
    lines = assert_one_line_per_uri(client, job, uris)
    failed = [line for line in lines if not line["ok"]]
    assert sorted(line["uri"].rsplit("/", 1)[1] for line in failed) == sorted(
        u.rsplit("/", 1)[1] for u in uris if "/bad-" in u)
    assert all(line["error"]["message"] for line in failed), "each error says why"
    assert {line["model"] for line in lines if line["ok"]} == {model}
    record = client.jobs.get(job)
    assert record.status == DONE
    assert (record.ok, record.failed, record.images) == (len(uris) - 10, 10, len(uris))
    manifest = json.loads(client.storage.read(manifest_uri(record.results, job)))
    assert (manifest["images"], manifest["ok"], manifest["failed"]) == (len(uris),
                                                                        len(uris) - 10, 10)
    assert manifest["models"] == {model: len(uris) - 10}
    assert manifest["chunks"] == -(-len(uris) // 16)
    return lines


def score_in_process(settings: Settings, source: str, model: str, out: Path,
                     monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    assert cli_main(["score", source, "--model", model, "--out", str(out)]) == 0
    return {line["uri"]: line for line in map(json.loads, out.read_text().splitlines())}


def assert_same_predictions(lines: list[dict[str, Any]], expected: dict[str, dict[str, Any]]
                            ) -> None:
    for line in lines:
        ref = expected[line["uri"]]
        assert line["ok"] == ref["ok"], line["uri"]
        if line["ok"]:
            assert [t["index"] for t in line["top"]] == [t["index"] for t in ref["top"]]
            for got, want in zip(line["top"], ref["top"], strict=True):
                assert abs(got["prob"] - want["prob"]) < 1e-4


def test_job_over_local_storage_matches_rstream_score(
        env: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings, model = env
    client = Client(settings)
    uris = write_dataset(client.storage, f"local-{uuid.uuid4().hex[:6]}/images")
    job = run_job(client, uris[0].rsplit("/", 1)[0] + "/", model)
    lines = check_job(client, job, uris, model)
    expected = score_in_process(settings, uris[0].rsplit("/", 1)[0] + "/", model,
                                tmp_path / "score.jsonl", monkeypatch)
    assert_same_predictions(lines, expected)


def test_job_over_s3_matches_rstream_score(
        env: tuple[Settings, str], bucket: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    settings, model = env
    results = f"s3://{bucket}/results"
    s3 = Settings.from_env({}, **{**vars_of(settings), "results": results})
    client = Client(s3)
    prefix = f"s3://{bucket}/images-{uuid.uuid4().hex[:6]}/"
    uris = write_dataset(client.storage, prefix)
    job = run_job(client, prefix, model)
    assert client.storage.exists(join(results, job, "part-000000.jsonl"))
    lines = check_job(client, job, uris, model)
    expected = score_in_process(s3, prefix, model, tmp_path / "score.jsonl", monkeypatch)
    assert_same_predictions(lines, expected)


def vars_of(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


def test_pickle_message_is_refused_and_worker_keeps_serving(
        env: tuple[Settings, str], tmp_path: Path) -> None:
    settings, model = env
    marker = tmp_path / "pickle-was-executed"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    with Connection(settings.redis_url) as conn:
        KombuProducer(conn.channel(), serializer="pickle").publish(
            ((Exploit(),), {}, {}), routing_key=INFER_QUEUE,
            headers={"task": INFER_TASK, "id": str(uuid.uuid4())})
    client = Client(settings)
    photo_uris = []
    for name, blob in good_images(3, seed=7):
        uri = f"after-pickle/{name}"
        client.storage.write(uri, blob)
        photo_uris.append(uri)
    job = run_job(client, "after-pickle/", model)
    assert client.jobs.get(job).ok == 3, "the worker still serves after the pickle message"
    assert not marker.exists(), "the pickle payload was never unpickled"


def test_resubmitting_the_same_job_does_not_double_count(env: tuple[Settings, str]) -> None:
    settings, model = env
    client = Client(settings)
    prefix = f"twice-{uuid.uuid4().hex[:6]}/"
    uris = []
    for name, blob in good_images(40, seed=3):
        client.storage.write(prefix + name, blob)
        uris.append(prefix + name)
    job = f"twice-{uuid.uuid4().hex[:6]}"
    submit(prefix, job=job, model=model, client=client)
    submit(prefix, job=job, model=model, client=client)  # at once: chunks may still be queued
    monitor.wait(client.jobs, client.storage, job, show_progress=False, timeout_s=WAIT_S)
    run_job(client, prefix, model, job=job)  # and again after it is done
    assert_one_line_per_uri(client, job, uris)
    record = client.jobs.get(job)
    assert (record.ok, record.failed, record.images, record.chunks) == (40, 0, 40, 3)


def test_retry_replaces_failed_lines_and_corrects_counts(env: tuple[Settings, str]) -> None:
    settings, model = env
    client = Client(settings)
    prefix = f"retry-{uuid.uuid4().hex[:6]}/"
    uris = write_dataset(client.storage, prefix, good=20)
    job = run_job(client, prefix, model)
    assert client.jobs.get(job).failed == 10
    fixed = prefix + "bad-empty.jpg"
    client.storage.write(fixed, good_images(1, seed=9)[0][1])  # the user fixes one file
    assert retry(job, client=client) == 10
    monitor.wait(client.jobs, client.storage, job, show_progress=False, timeout_s=WAIT_S)
    lines = assert_one_line_per_uri(client, job, uris)
    assert next(line for line in lines if line["uri"] == fixed)["ok"]
    record = client.jobs.get(job)
    assert (record.ok, record.failed, record.images) == (21, 9, 30)
    manifest = json.loads(client.storage.read(manifest_uri(settings.results, job)))
    assert (manifest["ok"], manifest["failed"], manifest["generation"]) == (21, 9, 1)


def test_backpressure_keeps_the_queue_at_the_limit(redis_server: str, tmp_path: Path) -> None:
    # Database 3: no worker consumes it.
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + "/3", tmp_path,
                                 max_pending_chunks=3, chunk_size=1)
    client = Client(settings)
    client.jobs.redis.flushdb()
    uris = [f"missing/{i}.jpg" for i in range(20)]
    done = threading.Event()
    thread = threading.Thread(
        target=lambda: (submit(uris, model="random:resnet18", client=client), done.set()))
    thread.start()
    peak = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        peak = max(peak, queued(client.jobs.redis, INFER_QUEUE))
    assert peak == 3
    assert not done.is_set(), "the producer waits while the queue is full"
    while not done.wait(0.01):  # play the worker: take one message at a time
        client.jobs.redis.rpop(INFER_QUEUE)
        peak = max(peak, queued(client.jobs.redis, INFER_QUEUE))
    thread.join()
    assert peak <= 3


def test_cancel_skips_queued_chunks(redis_server: str, tmp_path: Path) -> None:
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + "/4", tmp_path)
    client = Client(settings)
    client.jobs.redis.flushdb()
    for name, blob in good_images(48, seed=5):
        client.storage.write(f"cancel/{name}", blob)
    job = submit("cancel/", model=save_tiny_model(settings), client=client)
    assert client.jobs.cancel(job).status == CANCELLED
    worker = WorkerProcess(settings, tmp_path / "worker.log", "cancel").wait_ready()
    try:
        deadline = time.monotonic() + WAIT_S
        while queued(client.jobs.redis, INFER_QUEUE) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        worker.stop()
    assert not part_uris(client.storage, settings.results, job), "no chunk was scored"
    assert "job cancelled" in worker.log()
    assert client.jobs.get(job).processed == 0


def test_an_unloadable_model_fails_the_job_fast_and_every_image_gets_its_line(
        env: tuple[Settings, str]) -> None:
    settings, _ = env
    client = Client(settings)
    broken = save_tiny_model(settings)
    name, _, version = broken.partition("@")
    registry = Registry(client.storage, settings.models)
    client.storage.write(registry.weights_uri(name, version), b"\x00" * 64)  # corrupt weights
    prefix = f"unloadable-{uuid.uuid4().hex[:6]}/"
    images = good_images(80, seed=2)  # five chunks of 16
    uris = [prefix + name for name, _ in images]
    for uri, (_, blob) in zip(uris, images, strict=True):
        client.storage.write(uri, blob)
    job = submit(prefix, model=broken, client=client)
    final = monitor.wait(client.jobs, client.storage, job, show_progress=False, timeout_s=WAIT_S)
    assert final.status == "failed" and "weights.safetensors is unreadable" in final.last_error
    status = cli_run(settings, "status", job)
    assert "failed as a whole: ModelError" in status.stdout, status.stdout
    assert cli_run(settings, "wait", job, "--strict").returncode == 1
    deadline = time.monotonic() + 60  # the remaining parts follow at once, not by the queue
    while not client.storage.exists(manifest_uri(settings.results, job)):
        assert time.monotonic() < deadline, "the failed job's manifest was never written"
        time.sleep(0.1)
    lines = assert_one_line_per_uri(client, job, uris)
    assert {line["error"]["type"] for line in lines} == {"JobFailed"}
    assert all("ModelError" in line["error"]["message"] for line in lines)
    record = client.jobs.get(job)
    assert (record.status, record.failed, record.ok, record.outstanding) == ("failed", 80, 0, 0)


def cli_run(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
    env.update(settings.as_env())
    return subprocess.run([sys.executable, "-m", "rstream.producer.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_submit_refuses_a_model_that_does_not_exist(env: tuple[Settings, str]) -> None:
    settings, _ = env
    with pytest.raises(NotFoundError, match="rstream models ls"):
        submit(["a.jpg"], model="tiny@20990101T000000000000Z-dead", client=Client(settings))


def test_a_part_that_cannot_be_written_stalls_the_job_visibly(env: tuple[Settings, str]) -> None:
    settings, model = env
    client = Client(settings)
    job = f"stall-{uuid.uuid4().hex[:6]}"
    # A folder where the part file goes: every write of it is refused, for good.
    (Path(settings.storage_root) / part_uri(settings.results, job, 0)).mkdir(parents=True)
    prefix = f"{job}/"
    for name, blob in good_images(4, seed=1):
        client.storage.write(prefix + name, blob)
    submit(prefix, job=job, model=model, client=client)
    final = monitor.wait(client.jobs, client.storage, job, show_progress=False,
                         timeout_s=WAIT_S)
    assert final.stalled and final.stalled_chunks == 1
    assert "is a directory" in final.last_error


def test_an_output_location_that_cannot_be_written_is_refused_at_submit(
        env: tuple[Settings, str]) -> None:
    settings, model = env
    blocker = f"blocker-{uuid.uuid4().hex[:6]}"
    Client(settings).storage.write(blocker, b"a file where a directory should be")
    client = Client(Settings.from_env({}, **{**vars_of(settings),
                                            "results": f"{blocker}/results"}))
    prefix = f"refused-{uuid.uuid4().hex[:6]}/"
    for name, blob in good_images(2, seed=1):
        client.storage.write(prefix + name, blob)
    with pytest.raises(PermanentError, match="Not a directory"):
        submit(prefix, job=prefix.strip("/"), model=model, client=client)
    assert not client.jobs.exists(prefix.strip("/")), "no job was left behind"


def test_worker_metrics_name_the_model_and_each_failure_reason(
        env: tuple[Settings, str]) -> None:
    settings, model = env
    client = Client(settings)
    url = f"http://127.0.0.1:{settings.metrics_port}"
    before = scrape(f"{url}/metrics")
    prefix = f"metrics-{uuid.uuid4().hex[:6]}/"
    uris = write_dataset(client.storage, prefix, good=22)  # 32 images: 2 chunks of 16
    job = run_job(client, prefix, model)
    # A task counts its chunk when it returns, just after the job record says done: the last
    # chunk's numbers may land a moment after `wait` returns.
    deadline = time.monotonic() + 30
    while True:
        after = scrape(f"{url}/metrics")
        done = sample(after, "rstream_chunks_total", model=model, outcome="done", reason="") - \
            sample(before, "rstream_chunks_total", model=model, outcome="done", reason="")
        if done >= len(uris) // 16 or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    failed = Counter(line["error"]["type"] for line in monitor.results(
        client.jobs, client.storage, job) if not line["ok"])
    assert sum(failed.values()) == 10 and "ImageError" in failed
    assert delta("rstream_images_total", model=model, result="ok", reason="") == 22
    for reason, count in failed.items():
        assert delta("rstream_images_total", model=model, result="failed", reason=reason) == \
            count, reason
    assert delta("rstream_chunks_total", model=model, outcome="done", reason="") == \
        len(uris) // 16
    assert delta("rstream_fetch_seconds_count") == 32, "every object was read"
    assert delta("rstream_decode_seconds_count") == 22, "the good ones decoded"
    assert delta("rstream_queue_wait_seconds_count") == 22, "each good image waited for a batch"
    assert delta("rstream_batch_images_sum") == 22, "every good image went through a batch"
    assert delta("rstream_forward_seconds_count") >= 1
    # The default backend on the CPU is ONNX Runtime, with the export kept next to the weights
    name, version = model.split("@")
    registry = Registry(client.storage, settings.models)
    assert client.storage.exists(registry.version_uri(name, version, "model.onnx"))
    assert sample(after, "rstream_model_info", model=model, device="cpu", backend="onnx",
                  precision="fp32") == 1
    assert sample(after, "rstream_model_loads_total", model=model, kind="load", result="ok",
                  reason="") == 1, "loaded once by this process, whatever ran before"
    assert not any(name == "rstream_model_serving" for name, _ in after)

    assert http_get(f"{url}/healthz") == (200, {"ok": True, "model_thread": "idle",
                                                "waiting_images": 0})
    status, ready = http_get(f"{url}/readyz")
    assert status == 200 and ready["broker"] == "connected", ready
    assert http_get(f"{url}/")[0] == http_get(f"{url}/metrics/x")[0] == 404
