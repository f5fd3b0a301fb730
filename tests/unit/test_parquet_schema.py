"""Compaction of JSONL parts into typed Parquet files over local storage: the schema of every
line shape (top-k, label-only, error, embedding, kept columns), file splitting, and re-running
over an earlier run's files."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import numpy as np
import pytest

from rstream.producer.cli import main
from rstream.producer.export import csv_row
from rstream.shared.errors import ConfigError, PermanentError
from rstream.shared.jobs.parquet import compact, file_uri
from rstream.shared.jobs.results import encode, part_uri
from rstream.shared.storage import Storage
from tests.settings import make_settings

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(make_settings(storage_root=str(tmp_path)))


def _lines(start: int, count: int) -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    for i in range(start, start + count):
        if i % 3 == 2:
            lines.append({"uri": f"img/{i}.png", "ok": False, "model": None,
                          "error": {"type": "ImageError", "message": f"bad {i}"},
                          "columns": {"sku": 9_000_000_000 + i, "uri": f"in/{i}"}})
        else:
            lines.append({"uri": f"img/{i}.png", "ok": True, "model": "m@1",
                          "top": [{"index": i % 4, "label": f"c{i % 4}", "prob": 0.75},
                                  {"index": 9, "label": "c9", "prob": 0.25}],
                          "columns": {"sku": 9_000_000_000 + i, "uri": f"in/{i}"}})
    return lines


def _read(storage: Storage, results: str, job: str, files: list[dict[str, object]]) -> object:
    paths = [storage.local.path(file_uri(results, job, n)) for n in range(len(files))]
    return pa.concat_tables([pq.read_table(p) for p in paths])


def test_parts_compact_into_typed_files_of_rows_per_file(storage: Storage) -> None:
    for chunk in range(3):
        storage.write(part_uri("out", "j", chunk), encode(_lines(chunk * 5, 5)))
    files = compact(storage, "out", "j", rows_per_file=4)
    assert files == [{"file": f"scores-{n:05d}.parquet", "rows": rows}
                     for n, rows in enumerate([4, 4, 4, 3])]
    table = _read(storage, "out", "j", files)
    schema = table.schema
    assert schema.field("index").type == pa.int32() and schema.field("prob").type == pa.float32()
    assert schema.field("sku").type == pa.int64()
    assert schema.field("input_uri").type == pa.string()  # clashes with the result column
    assert table.column("uri").to_pylist() == [f"img/{i}.png" for i in range(15)]
    assert table.column("sku").to_pylist() == [9_000_000_000 + i for i in range(15)]
    row = table.slice(0, 1).to_pylist()[0]
    assert (row["ok"], row["index"], row["label"], row["prob"]) == (True, 0, "c0", 0.75)
    assert row["top"][1] == {"index": 9, "label": "c9", "prob": 0.25}
    bad = table.slice(2, 1).to_pylist()[0]
    assert (bad["ok"], bad["label"], bad["top"], bad["error_type"], bad["error_message"]) == (
        False, None, None, "ImageError", "bad 2")
    meta = pq.read_schema(storage.local.path(file_uri("out", "j", 0))).metadata
    assert meta[b"rstream.job"] == b"j" and meta[b"rstream.schema_version"] == b"1"

    # Again with larger files: the same rows, and the earlier run's extra files are gone.
    assert compact(storage, "out", "j", rows_per_file=100) == [
        {"file": "scores-00000.parquet", "rows": 15}]
    assert sorted(p.name for p in storage.local.path("out/j").glob("scores-*")) == [
        "scores-00000.parquet"]
    assert _read(storage, "out", "j", [{}]).equals(table)


def test_label_only_and_embedding_lines(storage: Storage) -> None:
    vectors = np.arange(8, dtype="<f2").reshape(2, 4) / 8
    lines = [{"uri": f"e/{i}", "ok": True, "index": 2, "label": "dog", "prob": 0.5,
              "model": "m@2", "embedding": base64.b64encode(vectors[i].tobytes()).decode(),
              "embedding_dim": 4} for i in range(2)]
    storage.write(part_uri("out", "e", 0), encode(lines))
    compact(storage, "out", "e", rows_per_file=10)
    table = pq.read_table(storage.local.path(file_uri("out", "e", 0)))
    assert table.schema.field("embedding").type == pa.list_(pa.float16(), 4)
    assert table.column("label").to_pylist() == ["dog", "dog"]
    assert table.column("top").to_pylist() == [None, None]
    got = np.array(table.column("embedding").to_pylist(), dtype="<f2")
    assert np.array_equal(got, vectors)


def test_lines_that_change_a_kept_column_type_fail_clearly(storage: Storage) -> None:
    first = {"uri": "a", "ok": False, "model": None, "error": {"type": "E", "message": "m"},
             "columns": {"sku": 1}}
    storage.write(part_uri("out", "t", 0), encode([first]))
    storage.write(part_uri("out", "t", 1), encode([{**first, "uri": "b",
                                                    "columns": {"sku": "x1"}}]))
    with pytest.raises(PermanentError, match="do not fit the job's Parquet schema"):
        compact(storage, "out", "t", rows_per_file=10)


def test_results_as_parquet_need_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["results", "some-job", "--format", "parquet"]) == 2
    assert "rstream: error: --format parquet needs --out FILE" in capsys.readouterr().err


def test_csv_rows_flatten_top_1_and_label_only_lines() -> None:
    top = {"uri": "a", "ok": True, "model": "m", "columns": {"label": "in", "n": 3},
           "top": [{"index": 1, "label": "cat", "prob": 0.5}]}
    only = {"uri": "b", "ok": True, "model": "m", "index": 2, "label": "dog", "prob": 0.25}
    assert csv_row(top) == {"uri": "a", "ok": True, "index": 1, "label": "cat", "prob": 0.5,
                            "model": "m", "error_type": None, "error_message": None,
                            "input_label": "in", "n": 3}
    assert (csv_row(only)["label"], csv_row(only)["index"]) == ("dog", 2)


def test_without_pyarrow_the_error_names_the_extra(storage: Storage,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # pyarrow made unimportable (a None entry in sys.modules): a host without the extra.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    storage.write(part_uri("out", "n", 0), encode(_lines(0, 1)))
    with pytest.raises(ConfigError, match=r"pip install 'rstream\[parquet\]'"):
        compact(storage, "out", "n", rows_per_file=10)
