"""Parquet results through a real worker: a parquet job with kept columns ends with typed
scores-NNNNN.parquet files that pyarrow and duckdb both read back as the JSONL lines, listed by
the manifest, and `rstream results --format parquet|csv` writes the same; a finisher that dies
mid-compaction leaves the job to the repair pass."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import pytest

from rstream.producer import monitor
from rstream.producer.cli import build_parser
from rstream.producer.client import Client
from rstream.producer.submit import submit
from rstream.shared.jobs.finish import finish
from rstream.shared.jobs.manifest import manifest_uri
from rstream.shared.jobs.parquet import file_uri
from rstream.shared.storage import Storage
from rstream.shared.tables.reader import Table
from rstream.worker.samples import write_samples
from tests.pipeline import assert_one_line_per_uri, pipeline_settings
from tests.services import WorkerProcess

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
duckdb = pytest.importorskip("duckdb")

MODEL = "random:resnet18:classes=3"


@pytest.fixture
def client(redis_server: str, tmp_path: Path) -> Client:
    # Database 8 of the session's private redis-server, for this module alone.
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + "/8", tmp_path, chunk_size=2,
                                 results="out", results_format="parquet",
                                 parquet_rows_per_file=4)
    client = Client(settings)
    client.jobs.redis.flushdb()
    return client


def _expected(line: dict[str, Any]) -> dict[str, Any]:
    """The Parquet row a JSONL line must become (probabilities as float32 round them)."""
    top = line.get("top") if line["ok"] else None
    best = top[0] if top else {}
    return {"uri": line["uri"], "ok": line["ok"], "index": best.get("index"),
            "label": best.get("label"), "prob": pytest.approx(best["prob"], rel=1e-6)
            if top else None, "model": line["model"],
            "error_type": None if line["ok"] else line["error"]["type"],
            "product_id": line["columns"]["product_id"], "input_label": line["columns"]["label"]}


def test_a_parquet_job_ends_with_typed_files_that_match_its_lines(
        client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uris = [*write_samples(client.storage, "photos/", 5, size=(32, 32), seed=4), "photos/gone.png"]
    (tmp_path / "manifests").mkdir()
    pq.write_table(pa.table({"uri": uris, "product_id": [9_000_000_000 + i for i in range(6)],
                             "label": [f"in{i}" for i in range(6)]}),
                   tmp_path / "manifests" / "m.parquet")
    job = submit("manifests/m.parquet", job="pq-results", model=MODEL, client=client,
                 table=Table(keep=("product_id", "label")))
    worker = WorkerProcess(client.settings, tmp_path / "worker.log", "parquet").wait_ready()
    try:
        assert monitor.wait(client.jobs, client.storage, job, show_progress=False,
                            timeout_s=90).status == "done"
    finally:
        worker.stop()
    lines = assert_one_line_per_uri(client, job, uris)  # the JSONL parts are kept
    manifest = json.loads(client.storage.read(manifest_uri("out", job)))
    assert manifest["results_format"] == "parquet"
    assert manifest["files"] == [{"file": "scores-00000.parquet", "rows": 4},
                                 {"file": "scores-00001.parquet", "rows": 2}]
    paths = [str(client.storage.local.path(file_uri("out", job, n))) for n in range(2)]

    table = pa.concat_tables([pq.read_table(p) for p in paths])
    assert table.schema.field("product_id").type == pa.int64()
    assert table.schema.field("index").type == pa.int32()
    rows = sorted(table.drop_columns(["top", "error_message"]).to_pylist(),
                  key=lambda row: row["uri"])
    assert rows == sorted((_expected(line) for line in lines), key=lambda row: row["uri"])

    con = duckdb.connect()
    got = con.execute("select uri, product_id, label, top[1].label from read_parquet(?) "
                      "order by uri", [paths]).fetchall()
    assert con.execute("select typeof(product_id) from read_parquet(?) limit 1",
                       [paths]).fetchone() == ("BIGINT",)
    by_uri = {line["uri"]: line for line in lines}
    assert [(row[0], row[1], row[2]) for row in got] == [
        (uri, by_uri[uri]["columns"]["product_id"],
         by_uri[uri]["top"][0]["label"] if by_uri[uri]["ok"] else None) for uri in sorted(uris)]
    assert all(row[3] == row[2] for row in got)

    # rstream results --format: Parquet with the files' rows, CSV flattened to top-1.
    for fmt in ("parquet", "csv"):
        args = build_parser().parse_args(["results", job, "--format", fmt, "--out",
                                          str(tmp_path / f"export.{fmt}")])
        assert isinstance(args, argparse.Namespace)
        assert args.handler(args, client.settings) == 0
    assert pq.read_table(tmp_path / "export.parquet").equals(table)
    with open(tmp_path / "export.csv", newline="") as handle:
        exported = list(csv.DictReader(handle))
    assert list(exported[0]) == ["uri", "ok", "index", "label", "prob", "model", "error_type",
                                 "error_message", "product_id", "input_label"]
    assert [(row["uri"], row["label"], row["product_id"]) for row in exported] == [
        (line["uri"], line["top"][0]["label"] if line["ok"] else "",
         str(line["columns"]["product_id"])) for line in lines]

    # A finisher that dies after the first file (fault injected by monkeypatch: the write of
    # the second file raises) leaves no manifest; the repair pass then compacts it all again.
    client.storage.delete(manifest_uri("out", job))
    client.storage.delete(file_uri("out", job, 1))
    real_write = Storage.write

    def dying_write(self: Storage, uri: str, data: bytes, **kwargs: Any) -> None:
        if uri.endswith("scores-00001.parquet"):
            raise OSError("finisher killed mid-compaction")
        real_write(self, uri, data, **kwargs)

    monkeypatch.setattr(Storage, "write", dying_write)
    with pytest.raises(OSError, match="mid-compaction"):
        finish(client.storage, client.jobs, job, ended=False, repair=True)
    assert not client.storage.exists(manifest_uri("out", job))
    monkeypatch.setattr(Storage, "write", real_write)
    repaired = finish(client.storage, client.jobs, job, ended=False, repair=True)
    assert repaired is not None and repaired["files"] == manifest["files"]
    assert pa.concat_tables([pq.read_table(p) for p in paths]).equals(table)
