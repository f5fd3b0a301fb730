"""Chunk messages sent in pipelined batches (``ChunkSender.send_many``) are the messages that
Celery's ``send_task`` builds, a real worker scores them alike, and a batch that fails half
way loses no chunk: the same submission sends what did not leave."""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import submit
from rstream.shared.constants import INFER_QUEUE, INFER_TASK
from rstream.shared.queue.inspect import held_task_ids
from rstream.shared.queue.messages import ChunkMessage
from rstream.shared.queue.publish import send_chunks
from tests.pipeline import assert_one_line_per_uri, good_images, pipeline_settings
from tests.services import RedisServer, ServiceUnavailable, WorkerProcess, service_unavailable

MODEL = "random:resnet18:classes=3"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private server: the mid-batch test changes its configuration."""
    try:
        server = RedisServer().start()
    except ServiceUnavailable as exc:
        service_unavailable(str(exc))
    yield server
    server.stop()


def popped(r: redis.Redis) -> dict[str, Any]:
    """The oldest message of the infer queue, its body decoded."""
    raw = r.rpop(INFER_QUEUE)
    assert raw is not None
    envelope = json.loads(raw)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    return dict(envelope)


def sent_events(r: redis.Redis, subscription: Any, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while len(events) < count:
        message = subscription.get_message(timeout=5.0)
        assert message is not None, f"{len(events)} of {count} task-sent events came"
        if message["type"] == "pmessage":
            body = json.loads(message["data"])
            events.append(json.loads(base64.b64decode(body["body"])))
    return events


def test_a_batch_sent_message_is_the_message_send_task_builds(own_redis: RedisServer,
                                                              tmp_path: Path) -> None:
    settings = pipeline_settings(own_redis.url, tmp_path)
    client = Client(settings)
    r = client.jobs.redis
    uris = [f"photos/{i}.jpg" for i in range(5)]
    message = ChunkMessage("batch-job", 3, uris, MODEL, "results")
    subscription = r.pubsub()
    subscription.psubscribe("*celeryev*")  # where kombu publishes Celery's events
    subscription.get_message(timeout=1.0)
    client.app.send_task(INFER_TASK, kwargs={"message": message.to_dict()}, queue=INFER_QUEUE,
                         task_id="batch-job:3:0")
    send_chunks(client.app, [message, ChunkMessage("batch-job", 4, uris[:1], MODEL, "results")])
    by_send_task, batched, second = popped(r), popped(r), popped(r)

    assert batched["body"] == by_send_task["body"], "the task's arguments, byte for byte"
    assert second["body"][1]["message"]["chunk"] == 4
    for key in ("content-type", "content-encoding"):
        assert batched[key] == by_send_task[key]
    differ = {"kwargsrepr"}  # a summary, not the first 1 KiB of the URIs
    assert set(batched["headers"]) == set(by_send_task["headers"])
    assert {k: v for k, v in batched["headers"].items() if k not in differ} == \
        {k: v for k, v in by_send_task["headers"].items() if k not in differ}
    assert batched["headers"]["kwargsrepr"] == message.summary()
    assert "'uris': '<5 URIs>'" in message.summary() and "photos/0.jpg" not in message.summary()
    one_per_message = {"delivery_tag"}
    assert set(batched["properties"]) == set(by_send_task["properties"])
    assert {k: v for k, v in batched["properties"].items() if k not in one_per_message} == \
        {k: v for k, v in by_send_task["properties"].items() if k not in one_per_message}

    # What Flower reads: a task-sent event for each message, the same fields either way.
    events = sent_events(r, subscription, 3)
    assert [event["uuid"] for event in events] == ["batch-job:3:0", "batch-job:3:0",
                                                   "batch-job:4:0"]
    assert all(event["type"] == "task-sent" and event["name"] == INFER_TASK
               and event["queue"] == INFER_QUEUE for event in events)
    assert set(events[1]) == set(events[0])
    assert events[1]["kwargs"] == message.summary()


def test_a_worker_scores_batch_sent_chunks_as_it_scores_send_task_ones(
        own_redis: RedisServer, tmp_path: Path) -> None:
    settings = pipeline_settings(own_redis.url, tmp_path, chunk_size=4)
    client = Client(settings)
    uris = []
    for name, blob in good_images(12, seed=3):
        client.storage.write(f"mixed/{name}", blob)
        uris.append(f"mixed/{name}")
    uris.sort()
    job = "mixed-sends"
    client.jobs.create(job, model=MODEL, results=settings.results, source="mixed/",
                       chunk_size=4)
    client.jobs.record_listed(job, 3, len(uris), uris[-1], done=True)
    record = client.jobs.get(job)
    # Chunk 0 the way Celery's own API sends it; chunks 1 and 2 in one batch.
    client.jobs.mark_sent(job, 0, 0, 4)
    client.app.send_task(INFER_TASK, queue=INFER_QUEUE, task_id=f"{job}:0:0", kwargs={
        "message": ChunkMessage(job, 0, uris[:4], MODEL, settings.results).to_dict()})
    client.sender.send_many(record, [(1, uris[4:8], None), (2, uris[8:], None)])
    client.jobs.end_submit(job)
    worker = WorkerProcess(settings, tmp_path / "worker.log", "batch").wait_ready()
    try:
        done = monitor.wait(client.jobs, client.storage, job, show_progress=False,
                            timeout_s=120)
    finally:
        worker.stop()
    assert (done.status, done.ok, done.failed, done.chunks) == ("done", 12, 0, 3)
    lines = assert_one_line_per_uri(client, job, uris)
    shapes = {tuple(sorted(line)) for line in lines}
    assert len(shapes) == 1, "every chunk's lines have the same fields, however it was sent"
    assert "InvalidMessage" not in worker.log() and "dead letter" not in worker.log().lower()


def test_a_batch_that_fails_half_way_loses_no_chunk(own_redis: RedisServer,
                                                    tmp_path: Path) -> None:
    settings = pipeline_settings(own_redis.url, tmp_path, chunk_size=400)
    client = Client(settings)
    r = client.jobs.redis
    # A real fault in the middle of a pipeline: Redis runs the commands before the first
    # argument longer than proto-max-bulk-len, then drops the connection. Chunk 6 (in the
    # batch of chunks 4 to 7, one segment of the input record) is 1.6 MB of URIs.
    r.config_set("proto-max-bulk-len", "1mb")
    uris = [f"photos/{i}.jpg" for i in range(8 * 400)]
    uris[6 * 400:7 * 400] = [f"photos/{i}-{'x' * 3_990}.jpg" for i in range(400)]
    with pytest.raises(Exception, match=r"(?i)connection|uncertain|closed|protocol"):
        submit(uris, job="half-way", model=MODEL, client=client)
    record = client.jobs.get("half-way")
    assert (record.chunks, record.images, record.listed_chunks) == (8, 3200, 8), \
        "every chunk of the batch was counted, once, before its message was published"
    queued = held_task_ids(r)
    assert {f"half-way:{c}:0" for c in range(6)} <= queued, "sent before the fault"
    assert not {"half-way:6:0", "half-way:7:0"} & queued, "never left"
    assert record.submit_error, "the submission says it stopped"

    r.config_set("proto-max-bulk-len", "512mb")  # the fault goes away
    sent = threading.Event()
    submit(uris, job="half-way", model=MODEL, client=client, progress=lambda s: sent.set())
    assert sent.is_set()
    record = client.jobs.get("half-way")
    assert (record.chunks, record.images, record.outstanding) == (8, 3200, 8), \
        "resending counted nothing twice"
    queued = Counter(json.loads(raw)["headers"]["id"] for raw in r.lrange(INFER_QUEUE, 0, -1))
    assert set(queued) == {f"half-way:{c}:0" for c in range(8)}, "every chunk is queued"
