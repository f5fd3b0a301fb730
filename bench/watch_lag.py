"""Watch mode in steady state: the lag when images land at half the workers' throughput.

    .venv/bin/python -m bench.watch_lag [--duration 120] [--warm-up 30] [--size 500x375]
                                        [--workers 1] [--interval 1] [--tiny] [--out FILE]

A private ``redis-server``, local storage, ``--workers`` real worker processes and the
watcher as a process (``python -m rstream.producer.cli watch landing/ --metrics-port P``).

1. Throughput: after a warm-up job (the model loads), one job of ``--probe`` images is
   submitted and timed from submit to done: the workers' images/s.
2. Arrivals: images (JPEG copies of ``--size``) are written under ``landing/`` at half that
   rate, evenly, for ``--duration`` seconds, while the watcher runs; its ``/metrics`` are
   scraped every second (``rstream_watch_lag_seconds``, ``rstream_watch_chunks_waiting``,
   ``rstream_watch_objects_total``).
3. Then, once every image is scored: each image's latency, from its write to the write of the
   result part that holds its line (the part file's mtime).

``--tiny`` serves a resnet18 with a 64 px input from the registry instead of
``random:resnet18`` at 224 px: the workers are about ten times faster, so the watcher itself
(a full listing of the growing folder each pass) is what is measured.

Prints JSON: the throughput, the arrival rate, the lag gauge and the per-image latency
(median, p95, max) over the steady state (after ``--warm-up`` seconds), the objects/s the
watcher recorded there, and the window jobs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import emit, machine
from bench.services import redis_server, start_worker
from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import submit
from rstream.shared.jobs.results import part_uris, read_part
from rstream.shared.settings import Settings
from rstream.worker.samples import variants
from tests.services import (
    Samples,
    WatcherProcess,
    free_port,
    publish_random_model,
    sample,
    scrape,
)

MODEL = "random:resnet18"
def throughput(client: Client, blobs: list[bytes], probe: int, model: str) -> float:
    """Images/s of the workers on one job of ``probe`` images, after a warm-up job."""
    for i, blob in enumerate(blobs[:64]):
        client.storage.write(f"warm/{i:04d}.jpg", blob)
    for i in range(probe):
        client.storage.write(f"probe/{i:05d}.jpg", blobs[i % len(blobs)])
    job = submit("warm/", model=model, client=client)
    monitor.wait(client.jobs, client.storage, job, show_progress=False, timeout_s=600)
    started = time.monotonic()
    job = submit("probe/", model=model, client=client)
    monitor.wait(client.jobs, client.storage, job, show_progress=False, timeout_s=1800)
    return probe / (time.monotonic() - started)


def land(client: Client, blobs: list[bytes], rate: float, duration: float, *, port: int,
         watcher: WatcherProcess) -> tuple[dict[str, float], list[tuple[float, Samples]]]:
    """Write images at ``rate`` per second for ``duration`` s, scraping the metrics every
    second; returns each URI's write time and the (time, metrics) samples."""
    written: dict[str, float] = {}
    samples: list[tuple[float, Samples]] = []
    start = time.time()
    next_scrape, i = start, 0
    while (now := time.time()) < start + duration:
        while i < int((now - start) * rate):
            uri = f"landing/{i:07d}.jpg"
            client.storage.write(uri, blobs[i % len(blobs)])
            written[uri] = time.time()
            i += 1
        if now >= next_scrape:
            samples.append((now - start, scrape(f"http://127.0.0.1:{port}/metrics")))
            next_scrape += 1.0
        if watcher.process.poll() is not None:
            raise SystemExit(f"the watcher exited:\n{watcher.log()[-3000:]}")
        time.sleep(0.01)
    return written, samples


def latencies(client: Client, settings: Settings, written: dict[str, float],
              after: float) -> list[float]:
    """Seconds from each image's write to its result part's write, for images written
    ``after`` (epoch s) or later."""
    root = Path(settings.storage_root)
    found = []
    for job in (j for j in client.jobs.recent(1000) if j.watch == "bench"):
        for part in part_uris(client.storage, settings.results, job.id):
            scored_at = (root / part).stat().st_mtime
            for line in read_part(client.storage, part):
                landed = written.get(line["uri"])
                if landed is not None and landed >= after:
                    found.append(scored_at - landed)
    return found


def wait_scored(client: Client, images: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(j.processed for j in client.jobs.recent(1000) if j.watch == "bench") < images:
        if time.monotonic() > deadline:
            raise SystemExit(f"not every image was scored after {timeout_s} s")
        time.sleep(0.5)


def recorded_rate(samples: list[tuple[float, Samples]]) -> float | None:
    """Objects per second the watcher recorded between the first and the last sample."""
    if len(samples) < 2:
        return None
    (t0, first), (t1, last) = samples[0], samples[-1]
    name = "rstream_watch_objects_total"
    recorded = sample(last, name, watch="bench") - sample(first, name, watch="bench")
    return round(recorded / max(1e-9, t1 - t0), 2)


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {"median": round(statistics.median(ordered), 3),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
            "max": round(ordered[-1], 3), "n": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--warm-up", type=float, default=30.0)
    parser.add_argument("--size", default="500x375")
    parser.add_argument("--probe", type=int, default=384, help="images in the throughput job")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--interval", type=float, default=1.0, help="the watcher's --interval")
    parser.add_argument("--tiny", action="store_true", help="a 64 px resnet18 (fast workers)")
    parser.add_argument("--out", help="also write the JSON here")
    opts = parser.parse_args()
    width, height = (int(v) for v in opts.size.split("x"))
    blobs = [blob for _, blob in variants(64, size=(width, height), seed=7)]
    with tempfile.TemporaryDirectory(prefix="rstream-bench-watch-") as work, \
            redis_server() as (url, _):
        settings = Settings.from_env(
            {}, redis_url=url, storage_root=work, device="cpu", chunk_size=64, max_batch=64,
            concurrency=2, decode_threads=2, max_pending_chunks=16)
        client = Client(settings)
        model = publish_random_model(settings, "tiny") if opts.tiny else MODEL
        workers = [start_worker("rstream.worker.app", "infer", settings, Path(work) / f"w{i}.log",
                                {"OMP_WAIT_POLICY": "PASSIVE"}) for i in range(opts.workers)]
        for worker in workers:
            worker.wait_ready()
        port = free_port()
        watcher = None
        try:
            rate = throughput(client, blobs, opts.probe, model)
            (Path(work) / "landing").mkdir()
            watcher = WatcherProcess(settings, Path(work) / "watcher.log", [
                "landing/", "--model", model, "--name", "bench", "--interval",
                str(opts.interval), "--metrics-port", str(port)]).wait_for("watching")
            started = time.time()
            written, samples = land(client, blobs, rate / 2, opts.duration, port=port,
                                    watcher=watcher)
            wait_scored(client, len(written))
            after = started + opts.warm_up
            steady = [m for t, m in samples if t >= opts.warm_up]
            report: dict[str, Any] = {
                "bench": "watch_lag", "machine": machine(),
                "model": "tiny (resnet18, 64 px)" if opts.tiny else MODEL,
                "size": opts.size, "workers": opts.workers, "interval_s": opts.interval,
                "chunk_size": settings.chunk_size, "concurrency": settings.concurrency,
                "throughput_img_s": round(rate, 2), "arrival_img_s": round(rate / 2, 2),
                "duration_s": opts.duration, "warm_up_s": opts.warm_up,
                "images": len(written),
                "lag_gauge_s": stats([sample(m, "rstream_watch_lag_seconds", watch="bench")
                                      for m in steady]),
                "chunks_waiting": stats([sample(m, "rstream_watch_chunks_waiting",
                                                watch="bench") for m in steady]),
                "image_latency_s": stats(latencies(client, settings, written, after)),
                "recorded_img_s": recorded_rate([s for s in samples if s[0] >= opts.warm_up]),
                "windows": sorted(j.id for j in client.jobs.recent(1000)
                                  if j.watch == "bench"),
            }
            assert watcher.stop() == 0, watcher.log()[-3000:]
        finally:
            if watcher is not None:
                watcher.kill()
            for worker in workers:
                worker.stop()
    emit(report, opts.out)


if __name__ == "__main__":
    main()
