"""Offline scale (issue 23, point 8), part (a): one producer submitting a Parquet manifest
with kept columns, its URIs/s and resident memory.

    .venv/bin/python -m bench.offline_scale [--rows 1000000] [--out FILE]

A Parquet manifest of ``--rows`` rows (uri, product_id int64, category string, price
float64) is written with pyarrow in row groups of 100,000, then submitted with
``--keep product_id,category,price`` to a private ``redis-server``, no worker consuming and
backpressure off: the real producer streams the rows, writes the input record (URIs and kept
columns) to local storage and sends one message per chunk. Reported: URIs/s, VmRSS at
checkpoints, the peak (VmHWM), and the manifest's size on disk.

Not built yet (see docs/limits.md): part (b), scoring tiny images through a stand-in model with
1, 2 and 4 worker processes, and part (c), the projection for 50 million images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.producer_scale import MODEL, Recorder
from bench.report import emit, machine
from bench.services import redis_server
from rstream.producer.client import Client
from rstream.producer.submit import submit
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--out", help="also write the JSON report here")
    opts = parser.parse_args()
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
    emit({"producer_parquet": producer, "machine": machine(), "settings": vars(opts)},
         opts.out)


if __name__ == "__main__":
    main()
