"""Compaction of a parquet job's parts: reading a job's JSONL parts once (decoding every line,
as ``rstream results`` does) against compacting them into Parquet files, over local storage,
and the RSS peak of each.

    python -m bench.compaction --lines 1000000 --out bench/results/compaction.json

Synthetic success lines (top-5, two kept columns), 64 a part. Targets (issue #23.2): compaction
<= 1.5x the read time; peak RSS <= 500 MiB.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.manifest_memory import Peak, rss_mib
from bench.report import emit, machine
from rstream.shared.jobs.parquet import compact, require_pyarrow
from rstream.shared.jobs.results import encode, job_lines, part_uri
from rstream.shared.storage import Storage
from tests.settings import make_settings

PART_LINES = 64


def make_parts(storage: Storage, lines: int) -> int:
    """Write the job's parts; the parts written."""
    rng = random.Random(0)
    parts = 0
    for start in range(0, lines, PART_LINES):
        batch = [{"uri": f"s3://photos/p/{i:09d}.jpg", "ok": True, "model": "resnet18@1",
                  "top": [{"index": rng.randrange(1000), "label": f"class{k}",
                           "prob": round(rng.random(), 6)} for k in range(5)],
                  "columns": {"product_id": 9_000_000_000 + i, "category": f"c{i % 50}"}}
                 for i in range(start, min(lines, start + PART_LINES))]
        storage.write(part_uri("results", "bench", parts), encode(batch))
        parts += 1
    return parts


def timed(label: str, run: Any) -> dict[str, Any]:
    before = rss_mib()
    began = time.perf_counter()
    with Peak() as peak:
        value = run()
    return {"step": label, "seconds": round(time.perf_counter() - began, 2),
            "rss_before_mib": round(before, 1), "rss_peak_mib": round(peak.peak, 1),
            "value": value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--out")
    args = parser.parse_args()
    require_pyarrow()  # imported before either measure: both pay for it alike
    work = Path(tempfile.mkdtemp(prefix="rstream-compaction-"))
    try:
        storage = Storage(make_settings(storage_root=str(work)))
        parts = make_parts(storage, args.lines)
        read = timed("read", lambda: sum(1 for _ in job_lines(storage, "results", "bench")))
        compacted = timed("compact", lambda: compact(storage, "results", "bench", 1_000_000))
        report = {"machine": machine(), "lines": args.lines, "parts": parts,
                  "read": read, "compact": compacted,
                  "compact_over_read": round(compacted["seconds"] / read["seconds"], 2),
                  "parquet_bytes": sum(p.stat().st_size
                                       for p in (work / "results" / "bench").glob("*.parquet"))}
    finally:
        shutil.rmtree(work)
    emit(report, args.out)


if __name__ == "__main__":
    main()
