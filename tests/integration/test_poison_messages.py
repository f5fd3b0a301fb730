"""Messages that cannot be decoded or validated: refused, dead-lettered with the reason, never
run and never requeued, while the one worker process goes on serving.

Each message is written straight into the ``infer`` list in Redis, the way kombu's Redis
transport keeps messages (a JSON envelope with a base64 body), so every layer that parses it
is the real one: kombu's transport, Celery's consumer and strategy, rstream's task.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import submit
from rstream.shared.constants import INFER_QUEUE, INFER_TASK
from rstream.shared.queue import deadletters
from rstream.shared.settings import Settings
from tests.pipeline import good_images, pipeline_settings
from tests.services import WorkerProcess

MODEL = "random:resnet18:classes=3"


def envelope(body: bytes | str, *, content_type: str | None = "application/json",
             encoding: str | None = "utf-8", body_encoding: str = "base64",
             task: str | None = INFER_TASK, encode: bool = True,
             task_id: str | None = None) -> str:
    tag = str(uuid.uuid4())
    headers: dict[str, Any] = {"lang": "py", "id": task_id or tag, "argsrepr": "",
                               "kwargsrepr": ""}
    if task is not None:
        headers["task"] = task
    raw = body.encode() if isinstance(body, str) else body
    return json.dumps({
        "body": base64.b64encode(raw).decode() if encode else body,
        "content-encoding": encoding, "content-type": content_type, "headers": headers,
        "properties": {"delivery_tag": tag, "body_encoding": body_encoding, "priority": 0,
                       "delivery_mode": 2, "correlation_id": tag, "reply_to": None,
                       "delivery_info": {"exchange": "", "routing_key": INFER_QUEUE}}})


def task_body(*args: Any, **kwargs: Any) -> str:
    return json.dumps([list(args), kwargs, {"callbacks": None, "errbacks": None,
                                            "chain": None, "chord": None}])


def chunk(job: str, **changes: Any) -> dict[str, Any]:
    message = {"job": job, "chunk": 0, "uris": ["poison/a.jpg"], "model": MODEL,
               "results": "results", "generation": 0}
    message.update(changes)
    return {key: value for key, value in message.items() if value is not None}


@pytest.fixture
def served(redis_server: str, tmp_path: Path) -> Iterator[tuple[Settings, WorkerProcess]]:
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + "/12", tmp_path / "root",
                                 chunk_size=4)
    redis.Redis.from_url(settings.redis_url).flushdb()
    worker = WorkerProcess(settings, tmp_path / "worker.log", "poison").wait_ready()
    yield settings, worker
    worker.stop()


def test_every_kind_of_poison_is_dead_lettered_and_the_worker_serves_on(
        served: tuple[Settings, WorkerProcess]) -> None:
    settings, worker = served
    client = Client(settings)
    r = client.jobs.redis
    # A real job whose record exists: messages that claim it must still match it.
    for name, blob in good_images(4, seed=5):
        client.storage.write(f"poison/{name}", blob)
    real = submit("poison/", model=MODEL, client=client)
    monitor.wait(client.jobs, client.storage, real, show_progress=False, timeout_s=120)
    before = client.jobs.get(real)

    poison = {
        "empty body, no content-type": envelope(b"", content_type=None, encoding=None),
        "body without content-encoding": envelope(task_body(message=chunk(real)),
                                                  content_type=None, encoding=None),
        "body that is not base64": envelope("!!!not base64!!!", encode=False),
        "envelope that is not JSON": "this is not JSON",
        "envelope without properties": json.dumps({"body": "", "headers": {}}),
        "body that is not JSON": envelope(b"{not json"),
        "pickle": envelope(b"\x80\x04K\x01.", content_type="application/x-python-serialize",
                           encoding="binary"),
        "unknown task": envelope(task_body(), task="rstream.nope"),
        "no task header": envelope(task_body(), task=None),
        "positional arguments": envelope(task_body(chunk(real))),
        "missing fields": envelope(task_body(message={"job": real})),
        "job id with a newline": envelope(task_body(message=chunk("abc\n"))),
        "job id that escapes results/": envelope(task_body(message=chunk("../inroot"))),
        "chunk number out of range": envelope(task_body(message=chunk(real, chunk=-1))),
        "a URI that is not a string": envelope(task_body(message=chunk(real, uris=[1]))),
        "an unknown model grammar": envelope(task_body(message=chunk(real,
                                                                     model="random:resnet19"))),
        "a chunk the job never sent": envelope(task_body(message=chunk(real, chunk=7))),
        "another results location": envelope(task_body(message=chunk(real, results="other"))),
        "a job that does not exist": envelope(task_body(message=chunk("no-such-job"))),
    }
    for item in poison.values():
        r.lpush(INFER_QUEUE, item)

    deadline = time.monotonic() + 60
    while deadletters.count(r) < len(poison):
        assert worker.process.poll() is None, worker.log()[-4000:]
        assert time.monotonic() < deadline, (deadletters.recent(r, 50), worker.log()[-4000:])
        time.sleep(0.1)
    time.sleep(1.0)  # anything requeued would be back in the queue by now

    assert worker.process.poll() is None, "the worker process is still the same one"
    assert "Unrecoverable error" not in worker.log()
    entries = deadletters.recent(r, 100)
    assert len(entries) == len(poison), "each message kept once"
    assert all(entry["reason"] for entry in entries)
    reasons = " | ".join(entry["reason"] for entry in entries)
    for expected in ("undecodable envelope", "undecodable task message", "body cannot be "
                     "decoded", "unknown task 'rstream.nope'", "not a task message",
                     "ContentDisallowed", "field job is not a plain", "job id '../inroot'",
                     "never sent chunk 7", "writes to 'other'", "unknown job",
                     "architecture 'resnet19'", "one keyword argument"):
        assert expected in reasons, f"{expected!r} not in {reasons}"
    assert r.llen(INFER_QUEUE) == 0 and r.hlen("unacked") == 0, "nothing requeued or held"
    after = client.jobs.get(real)
    assert (after.ok, after.failed, after.images, after.outstanding) == (
        before.ok, before.failed, before.images, before.outstanding), "counts untouched"
    assert not client.storage.exists("inroot/part-000000.jsonl")

    # ...and the same worker still scores a real job.
    again = submit("poison/", model=MODEL, client=client)
    final = monitor.wait(client.jobs, client.storage, again, show_progress=False, timeout_s=120)
    assert final.ok == 4


def test_a_chunk_whose_message_cannot_be_parsed_stalls_its_job_with_the_reason(
        served: tuple[Settings, WorkerProcess]) -> None:
    settings, _ = served
    client = Client(settings)
    job = f"unparsed-{uuid.uuid4().hex[:6]}"
    client.jobs.create(job, model=MODEL, results=settings.results, source="x/", chunk_size=4)
    client.jobs.mark_sent(job, 0, 0, 1)
    client.jobs.end_submit(job)
    before = deadletters.count(client.jobs.redis)
    # Its task id names chunk 0 of the job, but its body cannot be parsed as a chunk.
    client.jobs.redis.lpush(INFER_QUEUE, envelope(task_body(message=chunk(job, uris=[1])),
                                                  task_id=f"{job}:0:0"))
    deadline = time.monotonic() + 60
    while not client.jobs.get(job).stalled:
        assert time.monotonic() < deadline, deadletters.recent(client.jobs.redis, 5)
        time.sleep(0.1)
    record = client.jobs.get(job)
    assert record.stalled_chunks == 1 and "InvalidMessage" in record.last_error
    assert deadletters.count(client.jobs.redis) == before + 1
    assert record.finished, "status and wait see it end instead of waiting for ever"
