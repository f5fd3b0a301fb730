"""A running worker picks up a newly promoted version between chunks, and refuses a bad one."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import submit
from rstream.shared.jobs.results import part_uris
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.worker.samples import write_samples
from tests.pipeline import pipeline_settings
from tests.services import WorkerProcess, free_port, sample, scrape


def publish(settings: Settings, seed: int) -> str:
    from rstream.worker.model.loader import load_model, save_model

    loaded = load_model(f"random:resnet18:classes=10:seed={seed}")
    registry = Registry(Storage(settings), settings.models)
    return save_model(registry, "hot", loaded.module, arch="resnet18", classes=loaded.classes,
                      preprocessing=loaded.preprocessing)


def versions_by_part(client: Client, job: str) -> dict[int, set[str]]:
    parts: dict[int, set[str]] = defaultdict(set)
    for line in monitor.results(client.jobs, client.storage, job):
        chunk = int(line["uri"].rsplit("-", 1)[1].split(".")[0]) // 8
        parts[chunk].add(line["model"])
    return parts


def test_worker_serves_a_new_promotion_without_restart_and_never_mixes_a_chunk(
        redis_server: str, tmp_path: Path) -> None:
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + "/5", tmp_path / "root",
                                 chunk_size=8, max_batch=8, reload_interval=0.2,
                                 metrics_port=free_port())
    client = Client(settings)
    client.jobs.redis.flushdb()
    registry = Registry(client.storage, settings.models)
    first = publish(settings, seed=1)
    registry.promote("hot", first)
    write_samples(client.storage, "photos/", 160, size=(320, 240), seed=4)
    worker = WorkerProcess(settings, tmp_path / "worker.log", "hot").wait_ready()
    try:
        second = publish(settings, seed=2)
        job = submit("photos/", model="hot", client=client)
        while not part_uris(client.storage, settings.results, job):
            time.sleep(0.02)
        registry.promote("hot", second)
        monitor.wait(client.jobs, client.storage, job, show_progress=False, timeout_s=240)

        by_part = versions_by_part(client, job)
        assert all(len(v) == 1 for v in by_part.values()), f"a chunk mixed versions: {by_part}"
        served = set().union(*by_part.values())
        assert served == {f"hot@{first}", f"hot@{second}"}, "lines before and after differ"

        broken = publish(settings, seed=3)
        client.storage.write(registry.weights_uri("hot", broken), b"not safetensors at all")
        registry.promote("hot", broken)
        time.sleep(0.5)  # past the reload interval: the worker tries the new pointer
        after = submit("photos/", model="hot", client=client, job="after-broken")
        monitor.wait(client.jobs, client.storage, after, show_progress=False, timeout_s=240)
        served_after = {line["model"] for line in monitor.results(client.jobs, client.storage,
                                                                   after)}
        assert served_after == {f"hot@{second}"}, "the old version keeps serving"
        assert client.jobs.get(after).failed == 0
        metrics = scrape(f"http://127.0.0.1:{settings.metrics_port}/metrics")
        loads = {(dict(labels)["model"], dict(labels)["kind"], dict(labels)["result"],
                  dict(labels)["reason"]): value for (name, labels), value in metrics.items()
                 if name == "rstream_model_loads_total"}
        assert loads[(f"hot@{first}", "load", "ok", "")] == 1
        assert loads[(f"hot@{second}", "reload", "ok", "")] == 1
        assert loads[(f"hot@{broken}", "reload", "failed", "ModelError")] == 1, loads
        assert sample(metrics, "rstream_model_info", model=f"hot@{second}", device="cpu",
                      backend="eager", precision="fp32") == 1

        # A torn or hand-edited production.json while chunks are queued: the current version
        # goes on serving them.
        corrupt = submit("photos/", model="hot", client=client, job="corrupt-pointer")
        client.storage.write(registry.pointer_uri("hot"), b'{"version": "hot@')
        final = monitor.wait(client.jobs, client.storage, corrupt, show_progress=False,
                             timeout_s=240)
        assert (final.ok, final.failed, final.stalled_chunks) == (160, 0, 0), "no chunk lost"
        assert {line["model"] for line in monitor.results(
            client.jobs, client.storage, corrupt)} == {f"hot@{second}"}
    finally:
        worker.stop()
    assert f"hot@{broken}" in worker.log() and "unreadable" in worker.log()
    assert worker.log().count("production.json is corrupt") == 1, "logged once, not per check"
