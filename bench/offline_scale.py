"""Offline scale (issue 23, point 8): how big one job can get, measured on this machine.

    .venv/bin/python -m bench.offline_scale [--part producer|pipeline|all] [--rows 1000000]
                                            [--images 6000] [--workers 1,2,4] [--out FILE]

Part (a), ``producer``: a Parquet manifest of ``--rows`` rows (uri, product_id int64,
category string, price float64) is written with pyarrow in row groups of 100,000, then
submitted with ``--keep product_id,category,price`` to a private ``redis-server``, no worker
consuming and backpressure off: the real producer streams the rows, writes the input record
(URIs and kept columns) to local storage and sends one message per chunk. Reported: URIs/s,
VmRSS at checkpoints, the peak (VmHWM), and the manifest's size on disk.

Part (b), ``pipeline``: ``--images`` 32x32 JPEGs on local storage scored through
bench/standin_app.py (rstream's worker with a forward that costs nothing; the model's
preprocessing is resize 32 / crop 32), with 1, 2 and 4 real worker processes in turn, each
job submitted from a JSON lines manifest with two kept columns. What it measures is the
pipeline's own cost: the message, the fetch, the decode, the batcher, the result lines, the
part write, the job record, the manifest. Reported per run: images/s in all and per process,
and the worker processes' CPU seconds per image (this machine's 2 cores are shared by every
process, so the CPU cost is the figure that carries to a bigger host).

Part (c), the projection: hours for 50 million images on 8 and 64 GPUs, each GPU fed by the
pipeline (as many processes as the host's cores allow at the measured CPU cost per image) and
capped by the bare forward the README states for an H100 (resnet50 fp16, batch 256).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.producer_scale import MODEL, Recorder
from bench.report import emit, machine
from bench.services import cpu_seconds, redis_server
from rstream.producer import monitor
from rstream.producer.client import Client
from rstream.producer.submit import submit
from rstream.shared.jobs.manifest import manifest_uri
from rstream.shared.settings import Settings
from rstream.shared.tables.reader import Table

KEEP = ("product_id", "category", "price")
ROW_GROUP = 100_000


def write_manifest(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("uri", pa.string()), ("product_id", pa.int64()),
                        ("category", pa.string()), ("price", pa.float64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            ids = range(start, min(rows, start + ROW_GROUP))
            writer.write_table(pa.table({
                "uri": [f"s3://rstream-bench/images/2024/06/img-{i:09d}.jpg" for i in ids],
                "product_id": [10_000_000 + i for i in ids],
                "category": [f"category-{i % 97}" for i in ids],
                "price": [round(i % 1000 * 0.37, 2) for i in ids]}, schema=schema))


def run_producer(client: Client, manifest: Path, rows: int) -> dict[str, Any]:
    recorder = Recorder(rows)
    submit(str(manifest), job="offline-parquet", model=MODEL, client=client, max_pending=0,
           progress=recorder, table=Table(keep=KEEP))
    seconds = time.perf_counter() - recorder.start
    return {"rows": rows, "kept_columns": list(KEEP), "seconds": round(seconds, 2),
            "uris_per_s": round(rows / seconds),
            "manifest_mib": round(manifest.stat().st_size / 2**20, 1),
            "checkpoints": recorder.rows}


def producer_part(opts: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rstream-offline-") as tmp, \
            redis_server() as (url, _pid):
        manifest = Path(tmp) / "manifest.parquet"
        write_manifest(manifest, opts.rows)
        settings = Settings.from_env({}, redis_url=url, storage_root=str(Path(tmp) / "root"),
                                     chunk_size=opts.chunk_size, log_level="warning")
        producer = run_producer(Client(settings), manifest, opts.rows)
    rss = " ".join(f"{c['uris'] // 1000}k:{c['rss_mib']}" for c in producer["checkpoints"])
    print(f"parquet manifest, {opts.rows} rows, keep {','.join(KEEP)}: "
          f"{producer['uris_per_s']} URIs/s; RSS MiB {rss}", file=sys.stderr)
    return producer


def tiny_jpegs(count: int) -> list[bytes]:
    """``count`` distinct 32x32 JPEGs (a gradient and the image's number in the pixels)."""
    from PIL import Image

    blobs = []
    for i in range(count):
        image = Image.new("RGB", (32, 32), ((i * 7) % 256, (i * 13) % 256, (i * 29) % 256))
        image.putpixel((i % 32, (i // 32) % 32), (255, 255, 255))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        blobs.append(out.getvalue())
    return blobs


def pipeline_part(opts: argparse.Namespace) -> list[dict[str, Any]]:
    from tests.services import WorkerProcess, publish_random_model

    runs = []
    with tempfile.TemporaryDirectory(prefix="rstream-pipeline-") as tmp, \
            redis_server() as (url, _pid):
        work = Path(tmp)
        settings = Settings.from_env(
            {}, redis_url=url, storage_root=str(work / "root"), device="cpu",
            backend="eager", chunk_size=opts.chunk_size, max_batch=opts.chunk_size,
            concurrency=opts.concurrency, decode_threads=opts.decode_threads,
            max_pending_chunks=0, log_level="info")  # the workers log "ready."
        client = Client(settings)
        model = publish_random_model(settings, "standin", resize=32, crop=32)
        lines = []
        for i, blob in enumerate(tiny_jpegs(opts.images)):
            uri = f"tiny/img-{i:07d}.jpg"
            client.storage.write(uri, blob)
            lines.append(json.dumps({"uri": uri, "sku": 1_000_000 + i, "shelf": f"s{i % 9}"}))
        manifest, warm = "manifests/tiny.jsonl", "manifests/warm.jsonl"
        client.storage.write(manifest, ("\n".join(lines) + "\n").encode())
        client.storage.write(warm, ("\n".join(lines[:opts.chunk_size * 8]) + "\n").encode())
        for run, count in enumerate(opts.workers):
            runs.append(_pipeline_run(opts, client, model, manifests=(warm, manifest),
                                      count=count, work=work / str(run),
                                      worker_process=WorkerProcess))
    return runs


def _pipeline_run(opts: argparse.Namespace, client: Client, model: str, *,
                  manifests: tuple[str, str], count: int, work: Path,
                  worker_process: Any) -> dict[str, Any]:
    """One job through ``count`` stand-in workers, after a warm-up job through them."""
    warm_manifest, manifest = manifests
    work.mkdir()
    workers = [worker_process(client.settings, work / f"standin-{count}-{i}.log",
                              f"standin{count}-{i}", app="bench.standin_app",
                              concurrency=opts.concurrency, omp_threads=1)
               for i in range(count)]
    try:
        for worker in workers:
            worker.wait_ready()
        warm = submit(warm_manifest, model=model, client=client, job=f"warm-{work.name}",
                      table=Table(keep=("sku", "shelf")))
        monitor.wait(client.jobs, client.storage, warm, show_progress=False, timeout_s=120)
        cpu_before = sum(cpu_seconds(w.process.pid) for w in workers)
        start = time.perf_counter()
        job = submit(manifest, model=model, client=client, job=f"tiny-{work.name}",
                     table=Table(keep=("sku", "shelf")))
        record = monitor.wait(client.jobs, client.storage, job, show_progress=False,
                              timeout_s=1800)
        seconds = time.perf_counter() - start
        cpu = sum(cpu_seconds(w.process.pid) for w in workers) - cpu_before
    finally:
        for worker in workers:
            worker.stop(timeout_s=20)
    written = json.loads(client.storage.read(manifest_uri(client.settings.results, job)))
    result = {"workers": count, "images": record.images, "ok": record.ok,
              "failed": record.failed, "manifest_ok": written["ok"],
              "seconds": round(seconds, 2), "images_per_s": round(record.images / seconds),
              "images_per_s_per_process": round(record.images / seconds / count),
              "worker_cpu_ms_per_image": round(1000 * cpu / record.images, 3)}
    print(f"{count} stand-in worker(s): {result['images_per_s']} images/s "
          f"({result['images_per_s_per_process']} per process), "
          f"{result['worker_cpu_ms_per_image']} CPU ms per image", file=sys.stderr)
    return result


# Bare forward of one H100, resnet50 fp16 batch 256 (docs/performance.md, bash bench/gpu.sh).
H100_RESNET50_FP16 = 12_578
# 500x375 JPEGs decoded on the CPU, 4 processes on one H100 host of 16 cores, the whole
# scoring path in process (docs/performance.md, bash bench/gpu_processes.sh 4 1024).
H100_HOST_CPU_DECODE = 1_700
HOST_CORES_PER_GPU = 16  # the lent GPU machines: 16 cores per GPU


def projection(runs: list[dict[str, Any]], images: int = 50_000_000) -> dict[str, Any]:
    """Hours for ``images`` on 8 and 64 GPUs, two ways. Tiny images: each GPU gets the lesser of
    its bare forward and what the pipeline delivers with ``HOST_CORES_PER_GPU`` cores at the
    measured CPU cost. Photos: the rate measured with 500x375 JPEGs decoded on the CPU."""
    cpu_ms = min(run["worker_cpu_ms_per_image"] for run in runs)
    pipeline = HOST_CORES_PER_GPU * 1000 / cpu_ms
    per_gpu = min(pipeline, H100_RESNET50_FP16)

    def hours(rate: float) -> dict[str, float]:
        return {str(gpus): round(images / (rate * gpus) / 3600, 2) for gpus in (8, 64)}

    return {
        "images": images, "pipeline_cpu_ms_per_image": cpu_ms,
        "pipeline_images_per_s_per_gpu_host": round(pipeline),
        "forward_images_per_s_per_gpu": H100_RESNET50_FP16,
        "tiny_images": {"limited_by": "pipeline" if pipeline < H100_RESNET50_FP16
                        else "forward", "hours": hours(per_gpu)},
        "photos_decoded_on_the_cpu": {"images_per_s_per_gpu": H100_HOST_CPU_DECODE,
                                      "limited_by": "CPU decode", "hours":
                                      hours(H100_HOST_CPU_DECODE)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("producer", "pipeline", "all"), default="all")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--workers", type=lambda text: [int(n) for n in text.split(",")],
                        default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--decode-threads", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--out", help="also write the JSON report here")
    opts = parser.parse_args()
    report: dict[str, Any] = {}
    if opts.part in ("producer", "all"):
        report["producer_parquet"] = producer_part(opts)
    if opts.part in ("pipeline", "all"):
        report["pipeline"] = pipeline_part(opts)
        report["projection"] = projection(report["pipeline"])
    report.update(machine=machine(), settings=vars(opts))
    emit(report, opts.out)


if __name__ == "__main__":
    main()
