"""End-to-end throughput next to the bare model and a one-task-per-image Celery app; prints JSON.

    .venv/bin/python -m bench.e2e [--images 512] [--size 500x375] [--arch resnet18]
                                  [--storage s3|local] [--repeats 3] [--no-naive]

In one run, on one machine, with one model, device, precision, thread count and batch size:

- ``bare``: ``Predictor.predict`` on ready uint8 batches of ``--max-batch`` images (the ceiling);
- ``rstream``: ``rstream.producer.submit`` of the image prefix -> Redis -> one real ``celery -A
  bench.rstream_app worker -Q infer --pool threads -c N`` process (``rstream.worker.app`` plus a
  stats command) -> every result part and the manifest written; timed from submit to the manifest;
- ``dataloader``: the peer to beat, a plain PyTorch loop (``bench/dataloader_peer.py``: a
  ``Dataset`` fetching with the same storage client, PIL and torchvision's reference
  transforms, ``DataLoader(num_workers=--loader-workers)``, the same model in eager PyTorch,
  one JSONL write at the end); timed from the first fetch to the file written;
- ``naive`` (``--naive``): one task per image (``bench/naive_app.py``) on a worker with the
  same pool, concurrency and threads; timed from the first send to the last result object.

For rstream it also reports the seconds from submit to the first chunk's lines, and the
per-job overhead: the job's time minus images / its steady rate. The steady rate is the
marginal one: right after each timed rstream job, a job of ``--overhead-images`` images
(default: a third, in whole pairs of chunks) runs on a prefix of its own, and the overhead is
the intercept of the line through the two (T_N - N (T_N - T_M) / (N - M)). The rate between a
job's first and last chunk is a poor stand-in: with ``-c 2`` chunks finish in pairs.
``bare`` is the forward pass of rstream's own backend (``--backend``, default auto: ONNX
Runtime on the CPU).

Images are JPEGs of ``--size`` made by ``rstream.worker.samples`` from photos shipped with
scikit-image and scikit-learn, on moto's S3 server (``--storage s3``, over HTTP, in this
process) or on local disk. A private ``redis-server`` is started on a free port. Both workers
are started and warmed up (model loaded) before any timing. The three measurements then
alternate ``--repeats`` times, in a rotating order, so all see the same machine load; ratios
are medians of the ratios within a repeat. Where rstream's time goes comes from the worker's
batcher counters (forward seconds, batches), the CPU seconds of each process, and a one-thread
profile of fetch and decode.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import boto3

from bench.dataloader_peer import DataLoaderPeer
from bench.report import machine
from bench.services import (
    cpu_seconds,
    moto_server,
    node_name,
    redis_server,
    start_worker,
)
from rstream.producer.client import Client
from rstream.producer.submit import submit
from rstream.shared.jobs.manifest import manifest_uri
from rstream.shared.settings import Settings
from rstream.worker.samples import write_samples

BUCKET = "rstream-bench"
WAIT_TIMEOUT_S = 1800.0
POLL_S = 0.02
KINDS = ("rstream", "dataloader", "naive")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", default="500x375", help="WxH of every JPEG, e.g. 1920x1080")
    parser.add_argument("--arch", default="resnet18", help="resnet18 or resnet50 (random:ARCH)")
    parser.add_argument("--model", default="", help="a model reference; overrides --arch")
    parser.add_argument("--storage", choices=("s3", "local"), default="s3")
    parser.add_argument("--redis-url", default="",
                        help="a dedicated Redis to use instead of a private redis-server (the "
                             "benchmark's workers consume its infer queue)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive", action="store_true", help="also run the naive baseline")
    parser.add_argument("--overhead-images", type=int, default=-1,
                        help="images of the second, smaller rstream job that gives the per-job "
                             "overhead (-1: a third of --images in pairs of chunks; 0: none)")
    parser.add_argument("--no-dataloader", action="store_true",
                        help="skip the DataLoader peer")
    parser.add_argument("--loader-workers", type=int, default=2,
                        help="num_workers of the DataLoader peer")
    parser.add_argument("--backend", default="auto", help="rstream's RSTREAM_BACKEND")
    parser.add_argument("--bare-images", type=int, default=256,
                        help="images per bare pass (the first ones, in --max-batch batches)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker threads pool (-c)")
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--decode-device", default="auto",
                        help="rstream's RSTREAM_DECODE_DEVICE: auto, cpu, cuda or batched")
    parser.add_argument("--precision", default="auto", help="rstream's RSTREAM_PRECISION")
    parser.add_argument("--images-cache", default="",
                        help="with --storage local: a folder that keeps the generated JPEGs "
                             "between runs (hard links), so a series of runs makes them once")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--max-delay-ms", type=float, default=10.0)
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1,
                        help="OMP_NUM_THREADS of every process that runs the model")
    parser.add_argument("--omp-wait-policy", choices=("passive", "active", ""),
                        default="passive",
                        help="OMP_WAIT_POLICY of every process that runs the model ('': unset)")
    return parser.parse_args(argv)


def thread_env(opts: argparse.Namespace) -> dict[str, str]:
    """The thread settings every process that runs the model gets, this one included."""
    n = str(opts.torch_threads)
    env = {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
    if opts.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = opts.omp_wait_policy.upper()
    return env


def make_settings(opts: argparse.Namespace, work: Path, redis_url: str, endpoint: str) -> Settings:
    s3 = opts.storage == "s3"
    return Settings.from_env(
        {}, redis_url=redis_url, storage_root=str(work / "root"), device=opts.device,
        results=f"s3://{BUCKET}/results" if s3 else "results",
        s3_endpoint_url=endpoint if s3 else "", allowed_buckets=(BUCKET,) if s3 else (),
        chunk_size=opts.chunk_size, max_batch=opts.max_batch, max_delay_ms=opts.max_delay_ms,
        decode_threads=opts.decode_threads, concurrency=opts.concurrency,
        max_pending_chunks=0, log_level="info", backend=opts.backend,
        decode_device=opts.decode_device, precision=opts.precision)


def write_images(settings: Settings, opts: argparse.Namespace, images: int,
                 name: str = "images", seed: int = 0) -> tuple[str, list[str]]:
    """``images`` JPEGs under a prefix called ``name``; returns the prefix and the URIs."""
    width, height = (int(v) for v in opts.size.lower().split("x"))
    prefix = f"s3://{BUCKET}/{name}/" if opts.storage == "s3" else f"{name}/"
    if opts.storage == "s3":
        s3 = boto3.session.Session().client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1")
        if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(Bucket=BUCKET)
    if opts.images_cache and opts.storage == "local":
        return prefix, _cached_images(settings, opts, images, name, seed)
    return prefix, _made_images(settings, prefix, images, (width, height), seed)


def _cached_images(settings: Settings, opts: argparse.Namespace, images: int, name: str,
                   seed: int) -> list[str]:
    """The JPEGs of ``write_images`` hard-linked from ``--images-cache``, made there first
    when that size, count and seed are not there yet."""
    width, height = (int(v) for v in opts.size.lower().split("x"))
    kept = Path(opts.images_cache) / f"{width}x{height}-{images}-{seed}"
    if not (kept / ".complete").exists():
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir(parents=True)
        cache_settings = dataclasses.replace(settings, storage_root=str(kept))
        _made_images(cache_settings, "", images, (width, height), seed)
        (kept / ".complete").touch()
    uris = []
    for file in sorted(f for f in kept.rglob("*") if f.is_file() and f.name != ".complete"):
        relative = file.relative_to(kept).as_posix()
        target = Path(settings.storage_root) / name / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(file, target)
        uris.append(f"{name}/{relative}")
    return uris


def _made_images(settings: Settings, prefix: str, images: int, size: tuple[int, int],
                 seed: int) -> list[str]:
    storage = Client(settings).storage
    # Made in parallel (PIL releases the GIL) under one sub-prefix per thread, each its own seed.
    parts = min(8, os.cpu_count() or 1, images)
    counts = [images // parts + (i < images % parts) for i in range(parts)]
    with ThreadPoolExecutor(parts) as pool:
        uris = pool.map(lambda i: write_samples(storage, f"{prefix}p{i}/", counts[i],
                                                size=size, seed=seed + i),
                        range(parts))
        return sorted(u for part in uris for u in part)


def overhead_images(opts: argparse.Namespace) -> int:
    """The size of the second rstream job: ``--overhead-images``, or a third of ``--images``
    rounded down to whole pairs of chunks (the worker runs ``-c`` chunks at once)."""
    if opts.overhead_images >= 0:
        return int(opts.overhead_images)
    pair = opts.chunk_size * opts.concurrency
    return max(pair, opts.images // 3 // pair * pair) if opts.images >= 2 * pair else 0


def batcher_stats(client: Client) -> dict[str, Any]:
    """The rstream worker's batcher counters, over Celery's remote control."""
    replies = client.app.control.broadcast("rstream_bench_stats", reply=True, timeout=5.0,
                                           destination=[node_name("infer")])
    if len(replies) != 1:
        raise SystemExit(f"expected one rstream worker to answer, got {replies}")
    return dict(next(iter(replies[0].values())))


def wait_until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not finished after {WAIT_TIMEOUT_S} s")
        time.sleep(POLL_S)


def run_rstream(client: Client, source: str | list[str], model: str, job: str
                ) -> tuple[float, dict[str, float]]:
    """Seconds from submit to the manifest of ``job``, and to its first chunk's lines."""
    events = client.jobs.events(job)  # subscribed before anything is sent
    start = time.perf_counter()
    submit(source, job=job, model=model, client=client, max_pending=0)
    first: float | None = None
    while not client.jobs.get(job).finished:
        if events.get_message(timeout=POLL_S) is not None and first is None:
            first = time.perf_counter() - start
        if time.perf_counter() - start > WAIT_TIMEOUT_S:
            raise SystemExit(f"job {job} not finished after {WAIT_TIMEOUT_S} s")
    events.close()
    uri = manifest_uri(client.settings.results, job)
    wait_until(lambda: client.storage.exists(uri), f"manifest of {job}")
    seconds = time.perf_counter() - start
    record = client.jobs.get(job)
    if record.failed or record.ok != record.images:
        raise SystemExit(f"job {job}: {record.failed} images failed")
    return seconds, {"first_lines_s": round(first if first is not None else seconds, 3)}


def overhead(big: tuple[int, float], small: tuple[int, float]) -> dict[str, float]:
    """The per-job overhead from two jobs of (images, seconds): the intercept of the line
    through them, T_N - N / r with r = (N - M) / (T_N - T_M) the marginal (steady) rate."""
    (n, t_n), (m, t_m) = big, small
    rate = (n - m) / max(t_n - t_m, 1e-9)
    return {"small_job_images": m, "small_job_s": round(t_m, 3),
            "steady_images_per_s": round(rate, 2), "overhead_s": round(t_n - n / rate, 3)}


def run_naive(client: Client, uris: list[str], model: str, job: str) -> float:
    """Seconds from the first task sent to the last image counted done."""
    from bench.naive_app import QUEUE, TASK, done_key

    start = time.perf_counter()
    for uri in uris:
        client.app.send_task(TASK, args=[uri, job, model, client.settings.results], queue=QUEUE)
    wait_until(lambda: int(client.jobs.redis.get(done_key(job)) or 0) >= len(uris),
               f"naive job {job}")
    return time.perf_counter() - start


class Pipeline:
    """The services, workers and data of one benchmark run."""

    def __init__(self, opts: argparse.Namespace, settings: Settings, work: Path,
                 redis_pid: int | None) -> None:
        self.opts, self.settings, self.redis_pid = opts, settings, redis_pid
        self.model = opts.model or f"random:{opts.arch}"
        self.source, self.uris = write_images(settings, opts, opts.images)
        small = overhead_images(opts)
        self.small = write_images(settings, opts, small, "images-small", seed=100) if small \
            else None
        self.client = Client(settings)
        env = thread_env(opts)
        self.workers = {"rstream": start_worker("bench.rstream_app", "infer", settings,
                                                work / "rstream-worker.log", env)}
        self.peer = None if opts.no_dataloader else DataLoaderPeer(
            settings, self.model, workers=opts.loader_workers, batch_size=opts.max_batch)
        if opts.naive:
            self.workers["naive"] = start_worker("bench.naive_app", "naive", settings,
                                                 work / "naive-worker.log", env)
        for worker in self.workers.values():
            worker.wait_ready()
        self.runs = 0

    @property
    def kinds(self) -> list[str]:
        return [k for k in KINDS if k in self.workers or (k == "dataloader" and self.peer)]

    def warm_up(self) -> None:
        """Load the model in each worker (and fill the caches) before anything is timed."""
        run_rstream(self.client, self.uris[:2 * self.settings.chunk_size], self.model,
                    "warm-up")
        if self.peer is not None:
            self.peer.run(self.uris[:self.settings.max_batch], self._out("warm-up"))
        if "naive" in self.workers:
            run_naive(self.client, self.uris[:4 * self.settings.concurrency], self.model,
                      "warm-up")

    def measure(self, kind: str) -> dict[str, Any]:
        """One timed run of ``kind`` with the CPU seconds each process spent in it."""
        self.runs += 1
        job = f"{kind}-{self.runs}"
        pids = {"worker": self.workers[kind].pid if kind in self.workers else None,
                "bench": os.getpid(), "redis": self.redis_pid}
        before_cpu = {k: cpu_seconds(p) for k, p in pids.items() if p}
        before_stats = batcher_stats(self.client) if kind == "rstream" else {}
        extra: dict[str, float] = {}
        if kind == "rstream":
            seconds, extra = run_rstream(self.client, self.source, self.model, job)
        elif kind == "dataloader":
            assert self.peer is not None
            seconds = self.peer.run(self.uris, self._out(job))
        else:
            seconds = run_naive(self.client, self.uris, self.model, job)
        cpu = {f"{k}_cpu_s": round(cpu_seconds(pids[k]) - v, 2) for k, v in before_cpu.items()}
        result: dict[str, Any] = {"seconds": round(seconds, 3),
                                  "images_per_s": len(self.uris) / seconds, **cpu, **extra}
        if kind == "rstream":
            after = batcher_stats(self.client)
            result["batcher"] = stage_split(before_stats, after, seconds)
            if self.small is not None:  # right after, on the same machine state
                source, uris = self.small
                small_seconds, _ = run_rstream(self.client, source, self.model, f"{job}-small")
                result.update(overhead((len(self.uris), seconds), (len(uris), small_seconds)))
        return result

    def _out(self, job: str) -> str:
        return f"{self.settings.results}/dataloader/{job}.jsonl"

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop()


def stage_split(before: dict[str, Any], after: dict[str, Any], wall: float) -> dict[str, Any]:
    """The worker's batcher counters over one run: how busy the model was, and how fast."""
    images = after["images"] - before["images"]
    batches = after["batches"] - before["batches"]
    forward = after["forward_s"] - before["forward_s"]
    return {"images": images, "batches": batches,
            "mean_batch": round(images / batches, 1) if batches else 0.0,
            "forward_s": round(forward, 3),
            "model_busy": round(forward / wall, 3),
            "forward_images_per_s": round(images / forward, 2) if forward else 0.0,
            "queue_wait_ms_per_image": round(
                1000 * (after["queue_wait_s"] - before["queue_wait_s"]) / max(images, 1), 1),
            # Python's garbage collector, on any thread of the worker (see bench/rstream_app.py)
            "gc_collections": after["gc_collections"] - before["gc_collections"],
            "gc_s": round(after["gc_s"] - before["gc_s"], 3)}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


def measure_all(pipeline: Pipeline, bare: Any, repeats: int) -> list[dict[str, Any]]:
    """``repeats`` rounds of every pipeline kind, each run between two bare passes.

    Each run's ratio uses the mean of the bare passes just before and just after it, so a
    machine that drifts between runs moves both sides of the ratio alike.
    """
    kinds = pipeline.kinds
    last_bare = bare.run()
    runs = []
    for r in range(repeats):
        for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
            run = pipeline.measure(kind)
            after = bare.run()
            run.update(kind=kind, repeat=r, bare_before=last_bare, bare_after=after)
            run["bare_images_per_s"] = (last_bare["images_per_s"] + after["images_per_s"]) / 2
            run["to_bare"] = run["images_per_s"] / run["bare_images_per_s"]
            runs.append(run)
            last_bare = after
            print(f"repeat {r + 1}/{repeats} {kind}: {run['images_per_s']:.1f} images/s, "
                  f"bare {run['bare_images_per_s']:.1f}, ratio {run['to_bare']:.3f}",
                  file=sys.stderr)
    return runs


def summarize(runs: list[dict[str, Any]], bare_info: dict[str, Any]) -> dict[str, Any]:
    by_kind = {k: [r for r in runs if r["kind"] == k] for k in KINDS}
    rstream, naive, loader = by_kind["rstream"], by_kind["naive"], by_kind["dataloader"]
    bares = [b for r in runs for b in (r["bare_before"], r["bare_after"])]
    # rstream/naive per repeat, each side against its own bare passes: drift cancels.
    to_naive = [a["to_bare"] / b["to_bare"] for a, b in zip(rstream, naive, strict=False)]
    to_loader = [a["to_bare"] / b["to_bare"] for a, b in zip(rstream, loader, strict=False)]
    batcher = [r["batcher"] for r in rstream]
    overheads = [r["overhead_s"] for r in rstream if "overhead_s" in r]
    return {
        "rstream_to_dataloader": median(to_loader),
        "dataloader_to_bare": median([r["to_bare"] for r in loader]),
        "first_lines_s": median([r["first_lines_s"] for r in rstream]),
        # None when no second job ran (--overhead-images 0, or too few images for one)
        "overhead_s": median(overheads) if overheads else None,
        "images_per_s": {"bare": median([b["images_per_s"] for b in bares]),
                         **{k: median([r["images_per_s"] for r in v])
                            for k, v in by_kind.items() if v}},
        "rstream_to_bare": median([r["to_bare"] for r in rstream]),
        "naive_to_bare": median([r["to_bare"] for r in naive]),
        "rstream_to_naive": median(to_naive),
        # rstream/bare = model_busy x forward_speed: the share of the wall time the worker's
        # model ran, times its speed there relative to the bare pass (below 1: CPU contention).
        "model_busy": median([b["model_busy"] for b in batcher]),
        "forward_speed_vs_bare": median([b["forward_images_per_s"] / r["bare_images_per_s"]
                                         for b, r in zip(batcher, rstream, strict=True)]),
        "ratios_per_repeat": {"rstream_to_bare": [round(r["to_bare"], 3) for r in rstream],
                              "rstream_to_dataloader": [round(x, 3) for x in to_loader],
                              "naive_to_bare": [round(r["to_bare"], 3) for r in naive],
                              "rstream_to_naive": [round(x, 3) for x in to_naive]},
        "bare_cpu_ms_per_image": median([b["cpu_ms_per_image"] for b in bares]),
        "bare_cores_used": median([b["cores_used"] for b in bares]),
        **bare_info,
    }


def table(summary: dict[str, Any], profile: dict[str, Any]) -> str:
    rates = summary["images_per_s"]
    rows = [f"{'':8} {'images/s':>9}"] + [f"{k:8} {v:9.1f}" for k, v in rates.items()]
    rows.append(f"rstream/bare  {summary['rstream_to_bare']:.3f}  (model busy "
                f"{summary['model_busy']:.2f} x forward speed "
                f"{summary['forward_speed_vs_bare']:.2f})")
    if summary["rstream_to_dataloader"]:
        overhead = summary["overhead_s"]
        rows.append(f"rstream/dataloader {summary['rstream_to_dataloader']:.2f}   "
                    f"dataloader/bare {summary['dataloader_to_bare']:.3f}   first lines "
                    f"{summary['first_lines_s']} s, per-job overhead "
                    + ("not measured" if overhead is None else f"{overhead} s"))
    if summary["rstream_to_naive"]:
        rows.append(f"rstream/naive {summary['rstream_to_naive']:.2f}   naive/bare "
                    f"{summary['naive_to_bare']:.3f}")
    rows.append(f"CPU ms per image: forward {summary['bare_cpu_ms_per_image']:.1f} "
                f"(bare uses {summary['bare_cores_used']:.2f} cores), fetch "
                f"{profile['fetch_cpu_ms_per_image']}, decode {profile['decode_cpu_ms_per_image']}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    os.environ.update(thread_env(opts))  # before torch loads in this process (bench.bare)
    from bench.bare import Bare, profile_inputs, torch_info

    with tempfile.TemporaryDirectory(prefix="rstream-e2e-") as tmp, \
            redis_server(opts.redis_url or None) as (redis_url, redis_pid), \
            (moto_server() if opts.storage == "s3" else nullcontext("")) as s3:
        settings = make_settings(opts, Path(tmp), redis_url, s3)
        pipeline = Pipeline(opts, settings, Path(tmp), redis_pid)
        try:
            count = min(opts.bare_images, len(pipeline.uris))
            blobs = [pipeline.client.storage.read(uri) for uri in pipeline.uris[:count]]
            bare = Bare(pipeline.model, settings, blobs)
            profile = profile_inputs(pipeline.client.storage, pipeline.uris[:64], settings,
                                     bare.predictor)
            pipeline.warm_up()
            bare.run()
            runs = measure_all(pipeline, bare, opts.repeats)
            bare.close()
        finally:
            pipeline.close()
        summary = summarize(runs, torch_info(settings))
    result = {"summary": summary, "profile": profile, "machine": machine(),
              "settings": {**vars(opts), "model": pipeline.model, **thread_env(opts),
                           "precision": settings.precision},
              "runs": [_rounded(r) for r in runs]}
    print(table(summary, profile), file=sys.stderr)
    print(json.dumps(result, indent=2))


def _rounded(run: Any) -> Any:
    if isinstance(run, dict):
        return {k: _rounded(v) for k, v in run.items()}
    return round(run, 3) if isinstance(run, float) else run


if __name__ == "__main__":
    main()
