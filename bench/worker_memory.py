"""Worker memory under a long stream of mixed good and bad images: resident memory stays flat.

    .venv/bin/python -m bench.worker_memory [--images 10000] [--warm-up 1000] [--out FILE]

One real worker process (``celery -A rstream.worker.app``, as ``rstream worker`` starts it) serves a
private ``redis-server`` and local storage. It first scores ``--warm-up`` images (the model
loads, the caches and allocator pools fill), then one job of ``--images`` images: real photos
cut to 48-400 px (JPEG and PNG), plus bad files of every kind (empty, truncated, corrupt, not
an image, a header declaring too many pixels, an object above ``RSTREAM_MAX_OBJECT_BYTES``).
The worker's VmRSS is sampled every 0.5 s from /proc. Prints JSON: RSS after warm-up, at
the end and at its peak, the growth (the target: under 200 MB), images/s and line counts.
The model is a resnet18 with a 64 px input, so the forward pass does not hide the decode
and I/O paths whose memory this measures.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.report import emit, machine
from bench.services import redis_server, start_worker
from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import submit
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.worker.samples import variants
from tests.pipeline import bad_images
from tests.services import publish_random_model

DISTINCT = 400  # distinct good images; the rest are copies under other names
LIMIT_MB = 200


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def write_images(storage: Storage, prefix: str, count: int, seed: int) -> dict[str, int]:
    """``count`` images under ``prefix``: 1 in 10 bad, the rest good; returns the kinds."""
    good = [blob for _, blob in variants(DISTINCT, seed=seed)]
    bad = [*bad_images(), ("bad-large.jpg", random.Random(seed).randbytes(1_500_000))]
    rng = random.Random(seed)
    kinds = {"good": 0, "bad": 0}
    for i in range(count):
        if i % 10 == 9:
            name, blob = rng.choice(bad)
            storage.write(f"{prefix}/bad-{i:06d}-{name}", blob)
            kinds["bad"] += 1
        else:
            storage.write(f"{prefix}/good-{i:06d}.img", good[i % DISTINCT])
            kinds["good"] += 1
    return kinds


def run_job(client: Client, source: str, model: str) -> Any:
    job = submit(source, model=model, client=client)
    return monitor.wait(client.jobs, client.storage, job, show_progress=False, timeout_s=3600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--warm-up", type=int, default=1_000)
    parser.add_argument("--out", help="also write the JSON here")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rstream-bench-mem-") as work, \
            redis_server() as (url, _):
        settings = Settings.from_env(
            {}, redis_url=url, storage_root=work, device="cpu", chunk_size=64, max_batch=64,
            concurrency=2, decode_threads=2, max_pending_chunks=0,
            max_object_bytes=1_000_000)  # the "too large" bad file is 1.5 MB
        client = Client(settings)
        model = publish_random_model(settings, "mem")
        write_images(client.storage, "warm", opts.warm_up, seed=1)
        kinds = write_images(client.storage, "stream", opts.images, seed=2)
        worker = start_worker("rstream.worker.app", "infer", settings, Path(work) / "worker.log",
                              {"OMP_NUM_THREADS": "2"}).wait_ready()
        try:
            run_job(client, "warm", model)
            after_warm_up = rss_mb(worker.pid)
            samples: list[float] = []
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.5):
                    samples.append(rss_mb(worker.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            job = run_job(client, "stream", model)
            seconds = time.monotonic() - started
            done.set()
            sampler.join()
            end = rss_mb(worker.pid)
        finally:
            worker.stop()
    growth = end - after_warm_up
    report = {
        "bench": "worker_memory", "machine": machine(), "images": opts.images,
        "warm_up_images": opts.warm_up, "kinds": kinds, "ok": job.ok, "failed": job.failed,
        "rss_after_warm_up_mb": round(after_warm_up, 1), "rss_end_mb": round(end, 1),
        "rss_peak_mb": round(max([*samples, end]), 1), "growth_mb": round(growth, 1),
        "limit_mb": LIMIT_MB, "within_limit": growth < LIMIT_MB,
        "images_per_s": round(opts.images / seconds, 1),
    }
    emit(report, opts.out)


if __name__ == "__main__":
    main()
