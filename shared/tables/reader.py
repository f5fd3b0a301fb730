"""Reading a manifest table row by row: CSV, JSON lines or Parquet, from any storage.

A :class:`Table` says how: the format (by the file's extension, or given), the column that
holds each image's URI (``uri`` by default) and the columns kept beside it, which travel with
the image into its result line unchanged in type (CSV cells are text; JSON lines and Parquet
keep their integers, floats, booleans and nulls). Rows are streamed: a CSV or JSON lines file
a line at a time, a Parquet file a record batch at a time, reading only the columns named.
A bad row (no URI, a value of a type that cannot travel, a missing kept column, a line that
is not JSON) is refused with its row number and column.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

from rstream.shared.errors import ConfigError, PermanentError

FORMATS = ("csv", "jsonl", "parquet")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
MAX_KEEP = 32  # kept columns per row
MAX_TEXT = 4096  # characters in one kept text value
BATCH_ROWS = 8192  # Parquet rows decoded at a time: what bounds the reader's memory
_SCALARS = (str, int, float, bool, type(None))

Row = tuple[str, dict[str, Any]]  # an image's URI and its kept columns


@dataclass(frozen=True)
class Table:
    """How to read a manifest table; ``format`` "" means: by the file's extension."""

    format: str = ""
    uri_column: str = "uri"
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.format and self.format not in FORMATS:
            raise ConfigError(f"--format {self.format!r} is not one of {', '.join(FORMATS)}")
        if not self.uri_column or not self.uri_column.strip():
            raise ConfigError("--uri-column needs a column name")
        if len(self.keep) > MAX_KEEP:
            raise ConfigError(f"--keep names {len(self.keep)} columns, more than {MAX_KEEP}")
        if self.uri_column in self.keep:
            raise ConfigError(f"--keep names the URI column {self.uri_column!r}: every result "
                              "line has its uri already")
        if len(set(self.keep)) != len(self.keep) or not all(c.strip() for c in self.keep):
            raise ConfigError("--keep names a column twice or an empty one: give COL,COL")

    @property
    def columns(self) -> list[str]:
        """The columns read: the URI column, then the kept ones."""
        return [self.uri_column, *self.keep]

    def for_location(self, location: str) -> Table:
        """This table with its format taken from ``location``'s extension when not given;
        ConfigError naming the formats when neither says it."""
        if self.format:
            return self
        fmt = format_of(location)
        if fmt is None:
            raise ConfigError(f"{location}: cannot tell the table's format from its name: "
                              f"give --format ({', '.join(FORMATS)})")
        return replace(self, format=fmt)

    def to_text(self) -> str:
        """The spec as the job record keeps it (a resubmission must name the same one)."""
        return json.dumps({"format": self.format, "uri_column": self.uri_column,
                           "keep": list(self.keep)}, sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> Table | None:
        """The spec of :meth:`to_text`; None for "" (a job whose source is no table)."""
        if not text:
            return None
        data = json.loads(text)
        return cls(data["format"], data["uri_column"], tuple(data["keep"]))


def from_options(fmt: str | None, uri_column: str | None,
                 keep: str | Sequence[str] | None) -> Table | None:
    """The table to read a list file as, from a submission's options (``keep`` as
    ``"a,b"`` or a list); None when none is given (a .csv, .ndjson or .parquet file is still
    read as a table, with the defaults); ConfigError for a bad option."""
    if fmt is None and uri_column is None and not keep:
        return None
    columns = parse_keep(keep) if isinstance(keep, str) or keep is None else tuple(keep)
    return Table(fmt or "", "uri" if uri_column is None else uri_column, columns)


def parse_keep(text: str | None) -> tuple[str, ...]:
    """``--keep a,b`` as a tuple of column names ("" or None: none)."""
    return tuple(c.strip() for c in text.split(",")) if text and text.strip() else ()


def format_of(location: str) -> str | None:
    """The table format a name's extension says, or None."""
    lowered = location.lower()
    return next((fmt for suffix, fmt in SUFFIXES.items() if lowered.endswith(suffix)), None)


def read_rows(opener: Callable[[], BinaryIO], where: str, table: Table) -> Iterator[Row]:
    """The rows of the table that ``opener`` opens, as (URI, kept columns), streamed;
    PermanentError naming ``where``, the row and the column for a bad row. ``table.format``
    must be set (:meth:`Table.for_location`)."""
    readers = {"csv": _csv_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows}
    with opener() as data:
        for number, values in readers[table.format](data, where, table):
            yield _row(values, table, f"{where}: row {number}")


def _row(values: dict[str, Any], table: Table, where: str) -> Row:
    uri = values.get(table.uri_column)
    if table.uri_column not in values:
        raise PermanentError(f"{where}: no column {table.uri_column!r} (the URI column; "
                             "name another with --uri-column)")
    if not isinstance(uri, str) or not uri.strip():
        raise PermanentError(f"{where}, column {table.uri_column!r}: the URI is "
                             f"{'empty' if uri in ('', None) else type(uri).__name__}, not "
                             "a non-empty string")
    kept = {}
    for name in table.keep:
        if name not in values:
            raise PermanentError(f"{where}: no column {name!r} (named by --keep)")
        kept[name] = check_value(values[name], f"{where}, column {name!r}")
    return uri.strip(), kept


def check_value(value: Any, where: str) -> Any:
    """``value`` when it can travel in a result line as it is (text up to MAX_TEXT
    characters, a number, a boolean, null); else PermanentError naming ``where``."""
    if not isinstance(value, _SCALARS):
        raise PermanentError(f"{where}: a {type(value).__name__} cannot be kept: kept "
                             "columns hold text, numbers, booleans or nulls")
    if isinstance(value, float) and not math.isfinite(value):
        raise PermanentError(f"{where}: {value} is not a number JSON can carry")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise PermanentError(f"{where}: {len(value)} characters, above {MAX_TEXT}")
    return value


def _csv_rows(data: BinaryIO, where: str, table: Table) -> Iterator[tuple[int, dict[str, Any]]]:
    text = io.TextIOWrapper(data, encoding="utf-8", newline="")
    try:
        reader = csv.DictReader(text)
        header = reader.fieldnames or []
        missing = [c for c in table.columns if c not in header]
        if missing:
            raise PermanentError(f"{where}: the header has no column {missing[0]!r} (it has "
                                 f"{', '.join(map(repr, header[:12])) or 'none'})")
        for number, row in enumerate(reader, 1):
            if None in row:  # more cells than the header names
                raise PermanentError(f"{where}: row {number} has more cells than the header")
            yield number, {c: row[c] for c in table.columns if row.get(c) is not None}
    except UnicodeDecodeError as exc:
        raise PermanentError(f"{where}: not UTF-8 text ({exc.reason}): save the manifest as "
                             "UTF-8") from None
    except csv.Error as exc:
        raise PermanentError(f"{where}: not CSV ({exc})") from None


def _jsonl_rows(data: BinaryIO, where: str,
                table: Table) -> Iterator[tuple[int, dict[str, Any]]]:
    number = 0
    for number, raw in enumerate(data, 1):
        if not raw.strip():
            continue
        try:
            values = json.loads(raw)
        except UnicodeDecodeError as exc:
            raise PermanentError(f"{where}: row {number} is not UTF-8 text ({exc.reason})") \
                from None
        except ValueError as exc:
            raise PermanentError(f"{where}: row {number} is not JSON ({exc})") from None
        if not isinstance(values, dict):
            raise PermanentError(f"{where}: row {number} is not a JSON object")
        yield number, values


def _parquet_rows(data: BinaryIO, where: str,
                  table: Table) -> Iterator[tuple[int, dict[str, Any]]]:
    parquet = _pyarrow_parquet()
    try:
        # pre_buffer=False and no threads: one batch of the named columns in memory at a time
        reader = parquet.ParquetFile(data, pre_buffer=False, memory_map=False)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid and OSError kinds
        raise PermanentError(f"{where}: not a Parquet file ({exc})") from None
    names = reader.schema_arrow.names
    missing = [c for c in table.columns if c not in names]
    if missing:
        raise PermanentError(f"{where}: no column {missing[0]!r} (it has "
                             f"{', '.join(map(repr, names[:12]))})")
    number = 0
    for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=table.columns,
                                     use_threads=False):
        columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for values in zip(*columns, strict=True):
            number += 1
            yield number, dict(zip(table.columns, values, strict=True))


def _pyarrow_parquet() -> Any:
    try:
        from pyarrow import parquet
    except ImportError:
        raise ConfigError("reading a Parquet manifest needs pyarrow: install the parquet "
                          "extra (pip install 'rstream[parquet]')") from None
    return parquet
