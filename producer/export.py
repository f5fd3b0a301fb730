"""``rstream results JOB --format jsonl|csv|parquet --out FILE``: a finished job's lines,
streamed from its JSONL parts (kept for either results format), in the format asked for.

CSV flattens each line to its top-1 class and its kept columns: no top-k list and no
embedding (a CSV cell holds one value). Parquet has the schema of the compacted files
(``shared/jobs/parquet.py``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from rstream.shared.jobs.parquet import kept_name, write_lines
from rstream.shared.jobs.results import Line

EXPORT_FORMATS = ("jsonl", "csv", "parquet")
CSV_COLUMNS = ("uri", "ok", "index", "label", "prob", "model", "error_type", "error_message")


def write_jsonl(lines: Iterable[Line], out: IO[str]) -> int:
    """One JSON object a line, as the parts hold them; the lines written."""
    count = 0
    for line in lines:
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        count += 1
    return count


def csv_row(line: Line) -> dict[str, Any]:
    """A line flattened: top-1 (or a label-only line's class), the error, the kept columns."""
    best = (line.get("top") or [line])[0] if line["ok"] else {}
    error = line.get("error") or {}
    row = {"uri": line["uri"], "ok": line["ok"], "index": best.get("index"),
           "label": best.get("label"), "prob": best.get("prob"), "model": line.get("model"),
           "error_type": error.get("type"), "error_message": error.get("message")}
    row.update({kept_name(name): value for name, value in line.get("columns", {}).items()})
    return row


def write_csv(lines: Iterable[Line], out: IO[str]) -> int:
    """A header and a row a line; the kept columns are those of the first line (one table's
    columns, the same on every line of a job)."""
    writer: csv.DictWriter[str] | None = None
    count = 0
    for line in lines:
        row = csv_row(line)
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(row), extrasaction="ignore")
            writer.writeheader()
        writer.writerow(row)
        count += 1
    if writer is None:
        csv.writer(out).writerow(CSV_COLUMNS)
    return count


def export(lines: Iterator[Line], fmt: str, out: str, job: str,
           stdout: IO[str]) -> int:
    """Write the lines to ``out`` (a path, or ``-`` for ``stdout``, not for parquet) in
    ``fmt``; the lines written."""
    if fmt == "parquet":
        return write_lines(lines, out, job)
    if out == "-":
        return write_jsonl(lines, stdout) if fmt == "jsonl" else write_csv(lines, stdout)
    with open(out, "w", encoding="utf-8", newline="") as handle:
        return write_jsonl(lines, handle) if fmt == "jsonl" else write_csv(lines, handle)
