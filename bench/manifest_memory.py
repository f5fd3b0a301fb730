"""The producer's memory while it reads a manifest: RSS growth over reading a URI list file
and a large Parquet manifest with kept columns through the submission's own path (the source's
entries, grouped into chunks as a submission records them), without Redis.

    python -m bench.manifest_memory --rows 10000000 --out bench/results/.../manifest_memory.json

Reports RSS before pyarrow is imported, after the import, and the peak while each source is
read, for each figure in MiB; and the rows per second read.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.report import emit, machine
from rstream.shared import sources
from rstream.shared.storage import Storage
from rstream.shared.tables.entries import chunked
from rstream.shared.tables.reader import Table
from tests.settings import make_settings


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Peak:
    """The highest RSS seen, sampled every 10 ms in a thread while a block runs."""

    def __enter__(self) -> Peak:
        self.peak, self.stop = rss_mib(), threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def read_through(source: sources.Source, storage: Storage) -> dict[str, Any]:
    before = rss_mib()
    began = time.perf_counter()
    rows = 0
    with Peak() as peak:
        for chunk in chunked(source.entries(storage), 64):
            rows += len(chunk.uris)
    elapsed = time.perf_counter() - began
    return {"rows": rows, "seconds": round(elapsed, 2), "rows_per_s": round(rows / elapsed),
            "rss_before_mib": round(before, 1), "rss_peak_mib": round(peak.peak, 1),
            "rss_growth_mib": round(peak.peak - before, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--out")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rstream-manifest-"))
    storage = Storage(make_settings(storage_root=str(work)))
    listing = work / "uris.txt"
    with open(listing, "w") as out:
        for start in range(0, args.rows, 100_000):
            out.write("".join(f"s3://photos/p/{i:09d}.jpg\n"
                              for i in range(start, min(args.rows, start + 100_000))))
    report: dict[str, Any] = {"machine": machine(), "rows": args.rows,
                              "rss_start_mib": round(rss_mib(), 1)}
    report["list_file"] = read_through(sources.resolve(str(listing), storage), storage)
    listing.unlink()
    before_import = rss_mib()
    import pyarrow as pa
    import pyarrow.parquet as pq
    report["pyarrow_import_mib"] = round(rss_mib() - before_import, 1)
    manifest = work / "products.parquet"
    writer = None
    for start in range(0, args.rows, 1_000_000):  # written in pieces: the writer is not measured
        ids = list(range(start, min(args.rows, start + 1_000_000)))
        batch = pa.table({"uri": [f"s3://photos/p/{i:09d}.jpg" for i in ids],
                          "product_id": ids, "category": [f"c{i % 50}" for i in ids],
                          "price": [i / 100 for i in ids]})
        writer = writer or pq.ParquetWriter(manifest, batch.schema)
        writer.write_table(batch, row_group_size=128_000)
        del batch, ids
    assert writer is not None
    writer.close()
    report["parquet_bytes"] = manifest.stat().st_size
    source = sources.resolve(str(manifest), storage,
                             table=Table(keep=("product_id", "category", "price")))
    report["parquet_manifest"] = read_through(source, storage)
    report["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    manifest.unlink()
    emit(report, args.out)


if __name__ == "__main__":
    main()
