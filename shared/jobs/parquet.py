"""Parquet results: a finished parquet job's JSONL parts compacted into typed Parquet files.

    {results}/{job}/scores-00000.parquet   the first RSTREAM_PARQUET_ROWS_PER_FILE lines
    {results}/{job}/scores-00001.parquet   the next ones, ...

The parts stay the job's source of truth (exactly-once rules, ``retry`` and ``rstream results``
read them) and are kept; the Parquet files are derived from them. Compaction streams: one part
is decoded at a time, rows go out in row groups of ``ROW_GROUP_ROWS``, and one file's bytes are
held until they are written (object stores take whole objects). Names are deterministic and
only the manifest, written after, marks the job complete, so a compaction cut short is simply
run again from the start by the repair pass of ``finish``.

pyarrow is the ``parquet`` extra: imported only here, only when a parquet job is compacted.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from typing import Any

from rstream.shared.errors import ConfigError, PermanentError
from rstream.shared.jobs.results import Line, job_prefix, part_uris, read_part
from rstream.shared.storage import Storage, join

SCHEMA_VERSION = "1"
FILE_PREFIX = "scores-"
FILE_NAME = FILE_PREFIX + "{number:05d}.parquet"
ROW_GROUP_ROWS = 65_536  # rows buffered before a row group is written: bounds the memory
RESULT_COLUMNS = ("uri", "ok", "index", "label", "prob", "top", "model", "error_type",
                  "error_message", "embedding")


def require_pyarrow() -> Any:
    """The pyarrow module, or a ConfigError that says how to install it."""
    try:
        import pyarrow
        from pyarrow import parquet  # noqa: F401  (the submodule must import too)
    except ImportError:
        raise ConfigError("parquet results need pyarrow: install the parquet extra "
                          "(pip install 'rstream[parquet]')") from None
    return pyarrow


def file_uri(results: str, job: str, number: int) -> str:
    """Where Parquet file ``number`` of ``job`` is written."""
    return join(job_prefix(results, job), FILE_NAME.format(number=number))


def kept_name(name: str) -> str:
    """The Parquet column of kept column ``name``: ``input_<name>`` when it clashes with a
    result column."""
    return f"input_{name}" if name in RESULT_COLUMNS else name


def _top1(line: Line) -> tuple[Any, Any, Any]:
    if not line["ok"]:
        return None, None, None
    if line.get("top"):
        best = line["top"][0]
        return best["index"], best["label"], best["prob"]
    return line.get("index"), line.get("label"), line.get("prob")


def _embeddings(lines: list[Line], dim: int, pa: Any) -> Any:
    """The lines' fp16 embeddings as one fixed-size list array (null where a line has none),
    built from the bytes themselves: no numpy on the submission side."""
    raw = [line.get("embedding") for line in lines]
    values = b"".join(base64.b64decode(text) if text else bytes(2 * dim) for text in raw)
    flat = pa.Array.from_buffers(pa.float16(), len(lines) * dim, [None, pa.py_buffer(values)])
    return pa.FixedSizeListArray.from_arrays(flat, dim,
                                             mask=pa.array([text is None for text in raw]))


class _Columns:
    """The typed schema of a job's files, fixed from the first lines that name each piece
    (kept columns' types from their first non-null values, the embedding's size)."""

    def __init__(self, pa: Any) -> None:
        self.pa = pa
        self.kept: dict[str, Any] = {}  # kept column name -> its arrow type
        self.embedding_dim: int | None = None

    def learn(self, lines: list[Line]) -> None:
        pa = self.pa
        names = dict.fromkeys(name for line in lines for name in line.get("columns", {}))
        for name in names:
            if self.kept.get(name, pa.null()) == pa.null():
                values = [line.get("columns", {}).get(name) for line in lines]
                self.kept[name] = pa.array(values).type
        if self.embedding_dim is None:
            self.embedding_dim = next((int(line["embedding_dim"]) for line in lines
                                       if line.get("embedding_dim")), None)

    def schema(self) -> Any:
        pa = self.pa
        top = pa.list_(pa.struct([("index", pa.int32()), ("label", pa.string()),
                                  ("prob", pa.float32())]))
        fields = [("uri", pa.string()), ("ok", pa.bool_()), ("index", pa.int32()),
                  ("label", pa.string()), ("prob", pa.float32()), ("top", top),
                  ("model", pa.string()), ("error_type", pa.string()),
                  ("error_message", pa.string())]
        if self.embedding_dim is not None:
            fields.append(("embedding", pa.list_(pa.float16(), self.embedding_dim)))
        fields += [(kept_name(name), pa.string() if kind == pa.null() else kind)
                   for name, kind in self.kept.items()]
        return pa.schema(fields)


def with_metadata(schema: Any, job: str) -> Any:
    """``schema`` with the key-value metadata every rstream Parquet file carries."""
    return schema.with_metadata({"rstream.schema_version": SCHEMA_VERSION, "rstream.job": job})


def lines_table(lines: list[Line], columns: _Columns) -> Any:
    """The lines as an arrow table of ``columns``' schema."""
    pa = columns.pa
    schema = columns.schema()
    top1 = [_top1(line) for line in lines]
    data: dict[str, list[Any]] = {
        "uri": [line["uri"] for line in lines],
        "ok": [bool(line["ok"]) for line in lines],
        "index": [t[0] for t in top1], "label": [t[1] for t in top1],
        "prob": [t[2] for t in top1],
        "top": [line.get("top") if line["ok"] else None for line in lines],
        "model": [line.get("model") for line in lines],
        "error_type": [(line.get("error") or {}).get("type") for line in lines],
        "error_message": [(line.get("error") or {}).get("message") for line in lines]}
    if columns.embedding_dim is not None:
        data["embedding"] = _embeddings(lines, columns.embedding_dim, pa)
    for name in columns.kept:
        data[kept_name(name)] = [line.get("columns", {}).get(name) for line in lines]
    try:
        return pa.table({field.name: pa.array(data[field.name], type=field.type)
                         for field in schema}, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise PermanentError(f"result lines do not fit the job's Parquet schema ({exc}); "
                             "a kept column changed type between lines") from None


def fit(table: Any, schema: Any) -> Any:
    """``table`` cast to the schema of the file being written (fixed by its first lines);
    PermanentError when later lines brought other columns or types."""
    try:
        return table.cast(schema)
    except (ValueError, TypeError, NotImplementedError) as exc:  # arrow's errors subclass these
        raise PermanentError(f"result lines do not fit the job's Parquet schema ({exc}); "
                             "the schema is fixed by the first lines that carry each column"
                             ) from None


def _tables(storage: Storage, results: str, job: str, columns: _Columns) -> Iterator[Any]:
    """One arrow table per part, in chunk order, each read when asked for."""
    for uri in part_uris(storage, results, job):
        lines = read_part(storage, uri)
        if lines:
            columns.learn(lines)
            yield lines_table(lines, columns)


class _FileWriter:
    """Writes scores-NNNNN.parquet files of at most ``rows_per_file`` rows, row group by row
    group, each file written to storage whole when it is full."""

    def __init__(self, storage: Storage, results: str, job: str, rows_per_file: int,
                 pa: Any) -> None:
        self.storage, self.results, self.job = storage, results, job
        self.rows_per_file, self.pa = rows_per_file, pa
        self.files: list[dict[str, Any]] = []
        self.pending: list[Any] = []
        self.pending_rows = 0
        self.writer: Any = None
        self.sink: Any = None
        self.rows = 0

    def add(self, table: Any) -> None:
        while table.num_rows:
            room = self.rows_per_file - self.rows - self.pending_rows
            head, table = table.slice(0, room), table.slice(room)
            self.pending.append(head)
            self.pending_rows += head.num_rows
            if self.pending_rows >= ROW_GROUP_ROWS or self.rows + self.pending_rows >= \
                    self.rows_per_file:
                self._flush()
            if self.rows >= self.rows_per_file:
                self._close()

    def _flush(self) -> None:
        if not self.pending:
            return
        pa = self.pa
        group = pa.concat_tables(self.pending, promote_options="permissive")
        if self.writer is None:
            self.sink = pa.BufferOutputStream()
            self.writer = pa.parquet.ParquetWriter(self.sink, with_metadata(group.schema,
                                                                            self.job))
        self.writer.write_table(fit(group, self.writer.schema))
        self.rows += group.num_rows
        self.pending, self.pending_rows = [], 0

    def _close(self) -> None:
        self._flush()
        if self.writer is None:
            return
        self.writer.close()
        uri = file_uri(self.results, self.job, len(self.files))
        self.storage.write(uri, self.sink.getvalue().to_pybytes())
        self.files.append({"file": FILE_NAME.format(number=len(self.files)), "rows": self.rows})
        self.writer = self.sink = None
        self.rows = 0

    def close(self) -> list[dict[str, Any]]:
        self._close()
        return self.files


def compact(storage: Storage, results: str, job: str, rows_per_file: int) -> list[dict[str, Any]]:
    """Compact the job's parts into Parquet files; the files written, in order, with their row
    counts. Files of an earlier run beyond the new count (another rows-per-file) are removed,
    so running it again leaves exactly the files it returns."""
    pa = require_pyarrow()
    columns = _Columns(pa)
    out = _FileWriter(storage, results, job, rows_per_file, pa)
    for table in _tables(storage, results, job, columns):
        out.add(table)
    files = out.close()
    _remove_stale(storage, results, job, {entry["file"] for entry in files})
    return files


def _batches(lines: Iterable[Line], size: int) -> Iterator[list[Line]]:
    batch: list[Line] = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_lines(lines: Iterable[Line], where: Any, job: str) -> int:
    """Write ``lines`` (any job's, streamed) as one Parquet file at ``where`` (a local path or a
    binary file), a row group per ``ROW_GROUP_ROWS`` lines; the rows written."""
    pa = require_pyarrow()
    columns = _Columns(pa)
    writer: Any = None
    rows = 0
    for batch in _batches(lines, ROW_GROUP_ROWS):
        columns.learn(batch)
        table = lines_table(batch, columns)
        if writer is None:
            writer = pa.parquet.ParquetWriter(where, with_metadata(table.schema, job))
        writer.write_table(fit(table, writer.schema))
        rows += len(batch)
    if writer is None:  # no lines: a file with the schema and no rows
        writer = pa.parquet.ParquetWriter(where, with_metadata(columns.schema(), job))
    writer.close()
    return rows


def _remove_stale(storage: Storage, results: str, job: str, keep: Iterable[str]) -> None:
    wanted = {join(job_prefix(results, job), name) for name in keep}
    for uri in list(storage.list(join(job_prefix(results, job), FILE_PREFIX))):
        if uri not in wanted:
            storage.delete(uri)
