"""Producer scale: URIs/s submitted, the producer's memory, and Redis memory per queued URI.

    .venv/bin/python -m bench.producer_scale [--count 1000000] [--chunk-size 64]
                                             [--limited-count 200000] [--max-pending 256]
                                             [--drain-chunks-per-s 400] [--out FILE]

A manifest of ``--count`` URIs is written to a temp file, then submitted three times to a
private ``redis-server`` on a free port, with no worker consuming:

- ``per_chunk``: the path before issue 23, kept here as the baseline: for each chunk one
  ``mark_sent`` call and one ``app.send_task`` (with its task-sent event), each its own round
  trip; backpressure off.
- ``unlimited``: today's path (``ChunkSender.send_many``: the marks of a batch in one
  pipelined call, its messages and events in one kombu pipeline), backpressure off
  (``max_pending=0``): every chunk message piles up in Redis. Measures URIs/s, the producer's
  resident memory (VmRSS) at 10k, 100k, 1M... URIs sent and its peak (VmHWM), and Redis
  ``used_memory`` per queued URI. ``speedup`` is its URIs/s over ``per_chunk``'s.
- ``limited``: backpressure on (``--max-pending`` chunks) for ``--limited-count`` URIs, with a
  thread that pops chunk messages from the queue at ``--drain-chunks-per-s``, playing the
  workers. The producer then sends only as fast as the queue drains, the queue stays at the
  limit, and Redis memory stays flat.

The producer is the real one (``rstream.producer.submit``: the list file read through once to check
it, every chunk's URIs written to the job's input record on local storage, the job record,
one message per chunk); only the consumer is played.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bench.report import emit, machine
from bench.services import memory_kib, redis_server, reset_peak_memory
from rstream.producer.client import Client
from rstream.producer.submit import Sent, submit
from rstream.shared.constants import INFER_QUEUE, INFER_TASK
from rstream.shared.jobs.inputs import InputRecord
from rstream.shared.jobs.sender import ChunkSender, Outgoing
from rstream.shared.jobs.store import Job
from rstream.shared.queue.inspect import queue_keys
from rstream.shared.queue.messages import ChunkMessage
from rstream.shared.settings import Settings

MODEL = "random:resnet18"  # not loaded: the producer only checks registry names


class PerChunkSender(ChunkSender):
    """The sending path before issue 23, as it was: one mark and one ``app.send_task`` per
    chunk (Celery's default ``kwargsrepr``, ``dataclasses.asdict`` for the body)."""

    def send_many(self, job: Job, chunks: Sequence[Outgoing], generation: int = 0) -> None:
        for chunk, uris, columns in chunks:
            self.jobs.mark_sent(job.id, chunk, generation, len(uris))
            message = ChunkMessage(job.id, chunk, uris, job.model, job.results, generation,
                                   columns)
            self.app.send_task(INFER_TASK, kwargs={"message": dataclasses.asdict(message)},
                               queue=INFER_QUEUE, task_id=message.task_id)


def write_manifest(path: Path, count: int) -> None:
    with path.open("w") as out:
        for start in range(0, count, 100_000):
            out.write("".join(f"s3://rstream-bench/images/2024/06/img-{i:09d}.jpg\n"
                              for i in range(start, min(count, start + 100_000))))


def checkpoints(count: int) -> list[int]:
    points, n = [], 10_000
    while n < count:
        points.append(n)
        n *= 10
    return [*points, count]


class Recorder:
    """The producer's progress callback: RSS and rate at each checkpoint of URIs sent."""

    def __init__(self, count: int) -> None:
        reset_peak_memory()
        self.rows: list[dict[str, Any]] = [{"uris": 0, "rss_mib": round(memory_kib() / 1024, 1)}]
        self.pending = checkpoints(count)
        self.start = time.perf_counter()

    def __call__(self, sent: Sent) -> None:
        images = sent.images
        if self.pending and images >= self.pending[0]:
            self.pending.pop(0)
            seconds = time.perf_counter() - self.start
            self.rows.append({"uris": images, "seconds": round(seconds, 2),
                              "uris_per_s": round(images / seconds),
                              "rss_mib": round(memory_kib("VmRSS") / 1024, 1),
                              "peak_rss_mib": round(memory_kib("VmHWM") / 1024, 1)})


class Drainer(threading.Thread):
    """Pops chunk messages off the infer queue at a steady rate, like workers would."""

    def __init__(self, url: str, per_s: float) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.interval = 1.0 / per_s
        self.stop = threading.Event()
        self.popped = 0
        self.max_queued = 0
        self.max_memory = 0

    def run(self) -> None:
        key = queue_keys(INFER_QUEUE)[0]
        next_at = time.perf_counter()
        while not self.stop.is_set():
            if self.client.rpop(key) is not None:
                self.popped += 1
            if self.popped % 50 == 0:
                self.max_queued = max(self.max_queued, int(self.client.llen(key)))
                self.max_memory = max(self.max_memory, used_memory(self.client))
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.perf_counter()))


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def run_unlimited(client: Client, manifest: Path, count: int,
                  job: str = "scale-unlimited") -> dict[str, Any]:
    r = client.jobs.redis
    r.flushdb()  # our private server: an earlier run's messages go
    before = used_memory(r)
    recorder = Recorder(count)
    submit(str(manifest), job=job, model=MODEL, client=client, max_pending=0,
           progress=recorder)
    seconds = time.perf_counter() - recorder.start
    record = InputRecord(client.storage, client.settings.results, job)
    queued = sum(int(r.llen(k)) for k in queue_keys(INFER_QUEUE))
    grown = used_memory(r) - before
    sample = r.lindex(INFER_QUEUE, -1) or b""  # the first chunk sent: a full one
    return {"uris": count, "seconds": round(seconds, 2), "uris_per_s": round(count / seconds),
            "chunks_queued": queued, "redis_used_memory_mib": round(grown / 2**20, 1),
            "input_record_objects": len(record.segments()),
            "redis_bytes_per_uri": round(grown / count, 1),
            "message_bytes_per_uri": round(len(sample) / min(count, client.settings.chunk_size),
                                           1),
            "checkpoints": recorder.rows}


def run_limited(client: Client, manifest: Path, count: int, url: str,
                drain_per_s: float) -> dict[str, Any]:
    r = client.jobs.redis
    r.flushdb()  # our private server: the unlimited run's messages go
    before = used_memory(r)
    drainer = Drainer(url, drain_per_s)
    drainer.start()
    recorder = Recorder(count)
    submit(str(manifest), job="scale-limited", model=MODEL, client=client, progress=recorder)
    seconds = time.perf_counter() - recorder.start
    drainer.stop.set()
    drainer.join()
    return {"uris": count, "max_pending_chunks": client.settings.max_pending_chunks,
            "drain_uris_per_s": round(drain_per_s * client.settings.chunk_size),
            "seconds": round(seconds, 2), "uris_per_s": round(count / seconds),
            "max_chunks_queued": drainer.max_queued,
            "redis_max_used_memory_mib": round((drainer.max_memory - before) / 2**20, 1),
            "checkpoints": recorder.rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--limited-count", type=int, default=200_000)
    parser.add_argument("--max-pending", type=int, default=256)
    parser.add_argument("--drain-chunks-per-s", type=float, default=400.0)
    parser.add_argument("--out", help="also write the JSON report here")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rstream-scale-") as tmp, \
            redis_server() as (url, _pid):
        manifest = Path(tmp) / "uris.txt"
        write_manifest(manifest, opts.count)
        settings = Settings.from_env({}, redis_url=url, storage_root=str(Path(tmp) / "root"),
                                     chunk_size=opts.chunk_size,
                                     max_pending_chunks=opts.max_pending, log_level="warning")
        client = Client(settings)
        baseline = Client(settings)
        baseline.sender = PerChunkSender(baseline.jobs, baseline.app)
        per_chunk = run_unlimited(baseline, manifest, opts.count, "scale-per-chunk")
        unlimited = run_unlimited(client, manifest, opts.count)
        unlimited["speedup"] = round(unlimited["uris_per_s"] / per_chunk["uris_per_s"], 2)
        limited_manifest = Path(tmp) / "limited.txt"
        write_manifest(limited_manifest, min(opts.limited_count, opts.count))
        limited = run_limited(client, limited_manifest, min(opts.limited_count, opts.count),
                              url, opts.drain_chunks_per_s)
    result = {"per_chunk": per_chunk, "unlimited": unlimited, "limited": limited,
              "machine": machine(), "settings": vars(opts)}
    rows = [f"{'run':10} {'URIs':>9} {'URIs/s':>8} {'RSS MiB at each checkpoint':>30}"]
    for name, run in (("per_chunk", per_chunk), ("unlimited", unlimited),
                      ("limited", limited)):
        rss = " ".join(f"{c['uris'] // 1000}k:{c['rss_mib']}" for c in run["checkpoints"])
        rows.append(f"{name:10} {run['uris']:9d} {run['uris_per_s']:8d} {rss:>30}")
    rows.append(f"batched over per-chunk: {unlimited['speedup']}x")
    rows.append(f"Redis: {unlimited['redis_bytes_per_uri']} bytes per queued URI; with "
                f"backpressure at most {limited['max_chunks_queued']} chunks queued, "
                f"{limited['redis_max_used_memory_mib']} MiB")
    print("\n".join(rows), file=sys.stderr)
    emit(result, opts.out)


if __name__ == "__main__":
    main()
