"""Manifest tables: CSV, JSON lines and Parquet rows read as (URI, kept columns), streamed,
with their types kept and a bad row named by its number and column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rstream.shared import sources
from rstream.shared.errors import ConfigError, InvalidMessage, PermanentError
from rstream.shared.jobs.inputs import InputRecord
from rstream.shared.queue.messages import ChunkMessage
from rstream.shared.storage import Storage
from rstream.shared.tables import reader
from rstream.shared.tables.entries import chunked
from rstream.shared.tables.reader import Table, from_options, read_rows
from tests.settings import make_settings

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROWS = [{"uri": "a/1.jpg", "product_id": 17, "price": 2.5, "category": "shoes", "new": True},
        {"uri": "a/2.jpg", "product_id": 9_000_000_001, "price": None, "category": "hats",
         "new": False}]
KEEP = ("product_id", "price", "category", "new")


def _write(tmp_path: Path, fmt: str, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        names = list(rows[0])
        text = ",".join(names) + "\n" + "".join(
            ",".join("" if r[n] is None else str(r[n]) for n in names) + "\n" for r in rows)
        path.write_text(text)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _rows(path: Path, table: Table) -> list[tuple[str, dict[str, Any]]]:
    table = table.for_location(str(path))
    return list(read_rows(lambda: open(path, "rb"), str(path), table))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_typed_formats_keep_each_column_in_its_type(tmp_path: Path, fmt: str) -> None:
    rows = _rows(_write(tmp_path, fmt, ROWS), Table(keep=KEEP))
    assert rows == [(r["uri"], {k: r[k] for k in KEEP}) for r in ROWS]
    assert type(rows[0][1]["product_id"]) is int and type(rows[0][1]["new"]) is bool


def test_csv_cells_are_kept_as_the_text_they_are(tmp_path: Path) -> None:
    rows = _rows(_write(tmp_path, "csv", ROWS), Table(keep=("product_id", "category")))
    assert rows == [("a/1.jpg", {"product_id": "17", "category": "shoes"}),
                    ("a/2.jpg", {"product_id": "9000000001", "category": "hats"})]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_another_uri_column_is_read_and_unkept_columns_are_dropped(
        tmp_path: Path, fmt: str) -> None:
    rows = [{"image_url": "s3://b/x.jpg", "sku": "A-1", "other": "no"}]
    assert _rows(_write(tmp_path, fmt, rows), Table(uri_column="image_url", keep=("sku",))) \
        == [("s3://b/x.jpg", {"sku": "A-1"})]


@pytest.mark.parametrize(("fmt", "rows", "error"), [
    ("jsonl", [{"uri": "a.jpg", "sku": 1}, {"uri": "", "sku": 1}],
     r"row 2, column 'uri': the URI is empty"),
    ("jsonl", [{"uri": "a.jpg", "sku": 1}, {"uri": 5, "sku": 2}],
     r"row 2, column 'uri': the URI is int"),
    ("jsonl", [{"uri": "a.jpg", "sku": 1}, {"uri": "b.jpg"}],
     r"row 2: no column 'sku' \(named by --keep\)"),
    ("jsonl", [{"uri": "a.jpg", "sku": {"nested": 1}}],
     r"row 1, column 'sku': a dict cannot be kept"),
    ("parquet", [{"uri": "a.jpg", "sku": 1}, {"uri": None, "sku": 2}],
     r"row 2, column 'uri': the URI is empty"),
    ("parquet", [{"uri": "a.jpg", "size": 1}], r"no column 'sku'"),
    ("csv", [{"uri": "a.jpg", "size": 1}], r"the header has no column 'sku'"),
])
def test_a_bad_row_is_named_by_its_number_and_column(
        tmp_path: Path, fmt: str, rows: list[dict[str, Any]], error: str) -> None:
    with pytest.raises(PermanentError, match=error):
        _rows(_write(tmp_path, fmt, rows), Table(keep=("sku",)))


def test_a_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.ndjson"
    path.write_text('{"uri": "a.jpg"}\n\n{"uri": "b.jpg"\n')
    with pytest.raises(PermanentError, match=r"m.ndjson: row 3 is not JSON"):
        _rows(path, Table())


def test_a_parquet_column_of_a_type_that_cannot_travel_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": ["a.jpg"], "tags": [[1, 2]]}), path)
    with pytest.raises(PermanentError, match=r"row 1, column 'tags': a list cannot be kept"):
        _rows(path, Table(keep=("tags",)))


def test_parquet_is_read_a_batch_at_a_time_and_only_the_columns_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "BATCH_ROWS", 100)
    path = tmp_path / "m.parquet"
    n = 1050
    pq.write_table(pa.table({"uri": [f"{i}.jpg" for i in range(n)], "id": list(range(n)),
                             "big": ["x" * 100] * n}), path, row_group_size=500)
    read: list[tuple[int, list[str]]] = []
    real = pq.ParquetFile.iter_batches

    def spy(self: Any, **kwargs: Any) -> Any:
        for batch in real(self, **kwargs):
            read.append((batch.num_rows, batch.schema.names))
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    rows = read_rows(lambda: open(path, "rb"), "m", Table("parquet", keep=("id",)))  # noqa: SIM115
    assert next(rows) == ("0.jpg", {"id": 0})
    assert read == [(100, ["uri", "id"])], "one batch decoded for the first row, no 'big'"
    assert [kept["id"] for _, kept in rows] == list(range(1, n))
    assert max(size for size, _ in read) == 100 and sum(size for size, _ in read) == n


def test_the_format_comes_from_the_extension_or_is_asked_for() -> None:
    assert Table().for_location("s3://b/m.ndjson").format == "jsonl"
    assert Table().for_location("m.PARQUET").format == "parquet"
    with pytest.raises(ConfigError, match="give --format"):
        Table().for_location("m.tsv")
    with pytest.raises(ConfigError, match="not one of csv, jsonl, parquet"):
        Table("xlsx")
    with pytest.raises(ConfigError, match="names the URI column"):
        from_options(None, "u", "a,u")
    assert from_options(None, None, None) is None
    table = from_options("csv", None, "a, b")
    assert table == Table("csv", "uri", ("a", "b"))
    assert Table.from_text(table.to_text()) == table


def test_a_missing_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins
    real = builtins.__import__

    def no_pyarrow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)  # no other way to lose pyarrow
    with pytest.raises(ConfigError, match=r"rstream\[parquet\]"):
        reader._pyarrow_parquet()


def test_a_table_source_gives_chunks_with_columns_and_records_them(tmp_path: Path) -> None:
    storage = Storage(make_settings(storage_root=str(tmp_path)))
    path = _write(tmp_path, "parquet", ROWS * 3)
    source = sources.resolve(str(path), storage, table=Table(keep=("product_id",)))
    assert source.kind == "file" and source.table is not None
    chunks = list(chunked(source.entries(storage, skip=1), 2))
    assert [c.uris for c in chunks] == [["a/2.jpg", "a/1.jpg"], ["a/2.jpg", "a/1.jpg"],
                                        ["a/2.jpg"]]
    assert chunks[0].columns == [{"product_id": 9_000_000_001}, {"product_id": 17}]
    record = InputRecord(storage, "results", "j")
    record.write_segment(0, [c.uris for c in chunks], columns=[c.columns for c in chunks])
    assert record.chunk_entries(2) == (["a/2.jpg"], [{"product_id": 9_000_000_001}])
    assert record.chunk(1) == ["a/2.jpg", "a/1.jpg"]
    folder = sources.resolve(str(tmp_path), storage)
    assert next(chunked(folder.entries(storage), 10)).columns is None


def test_a_chunk_message_carries_columns_and_refuses_bad_ones() -> None:
    message = ChunkMessage("j", 0, ["a.jpg", "b.jpg"], "random:resnet18", "results",
                           columns=[{"id": 1}, {"id": None}])
    assert ChunkMessage.from_dict(json.loads(json.dumps(message.to_dict()))) == message
    plain = ChunkMessage("j", 0, ["a.jpg"], "random:resnet18", "results")
    assert "columns" not in plain.to_dict()
    for bad in ([{"id": 1}], [{"id": 1}, {"id": [2]}], [{"id": 1}, "x"], [{"": 1}, {}]):
        with pytest.raises(InvalidMessage, match="columns"):
            ChunkMessage.from_dict({**message.to_dict(), "columns": bad})
