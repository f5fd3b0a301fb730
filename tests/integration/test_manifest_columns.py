"""Manifests with columns through a real worker: a CSV and a Parquet table submitted with
kept columns give result lines that carry them with their types; a resumed job (its messages
lost) and a retry of a failed image keep them, from the input record and the part."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from rstream.producer import monitor
from rstream.producer.cli import build_parser
from rstream.producer.client import Client
from rstream.producer.submit import resume, retry, submit
from rstream.shared.constants import INFER_QUEUE
from rstream.shared.errors import JobConflict
from rstream.shared.queue.inspect import queued
from rstream.shared.tables.reader import Table
from rstream.worker.samples import write_samples
from tests.pipeline import assert_one_line_per_uri, pipeline_settings
from tests.services import WorkerProcess

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

MODEL = "random:resnet18:classes=3"


@pytest.fixture
def client(redis_server: str, tmp_path: Path) -> Client:
    # Database 7 of the session's private redis-server, for this module alone.
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + "/7", tmp_path, chunk_size=2,
                                 results="out")
    client = Client(settings)
    client.jobs.redis.flushdb()
    return client


def _by_uri(client: Client, job: str, uris: list[str]) -> dict[str, dict[str, Any]]:
    return {line["uri"]: line for line in assert_one_line_per_uri(client, job, uris)}


def test_kept_columns_reach_every_line_with_their_types_through_resume_and_retry(
        client: Client, tmp_path: Path) -> None:
    uris = write_samples(client.storage, "photos/", 5, size=(32, 32), seed=3)
    late = "photos/late.png"  # missing at first: its error line keeps its columns too
    # CSV through the command line: cells are text.
    csv_path = tmp_path / "products.csv"
    csv_path.write_text("image,sku,category\n" + "".join(
        f"{uri},{100 + i},cat{i % 2}\n" for i, uri in enumerate(uris[:3])))
    args = build_parser().parse_args(["submit", str(csv_path), "--job", "csv-job", "--model",
                                      MODEL, "--uri-column", "image", "--keep", "sku,category"])
    assert isinstance(args, argparse.Namespace)
    assert args.handler(args, client.settings) == 0
    # Parquet from storage: integers, floats, booleans and nulls keep their types.
    table = pa.table({"uri": [*uris, late], "product_id": [9_000_000_000 + i for i in range(6)],
                      "price": [1.5, None, 3.0, 4.25, 5.0, 6.5],
                      "in_stock": [True, False, True, True, False, True],
                      "ignored": ["x"] * 6})
    pq.write_table(table, tmp_path / "manifests.parquet")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests.parquet").rename(tmp_path / "manifests" / "m.parquet")
    kept = Table(keep=("product_id", "price", "in_stock"))
    job = submit("manifests/m.parquet", job="pq-job", model=MODEL, client=client, table=kept)
    assert client.jobs.get(job).table == kept.for_location("m.parquet").to_text()
    with pytest.raises(JobConflict, match="table columns"):
        submit("manifests/m.parquet", job="pq-job", model=MODEL, client=client,
               table=Table(keep=("product_id",)))

    client.jobs.redis.delete(INFER_QUEUE)  # every message lost: resume sends from the record
    assert resume(job, client=client).chunks == 3
    args = build_parser().parse_args(["resume", "csv-job"])
    assert args.handler(args, client.settings) == 0
    assert queued(client.jobs.redis, INFER_QUEUE) == 5  # 3 chunks of pq-job, 2 of csv-job

    worker = WorkerProcess(client.settings, tmp_path / "worker.log", "columns").wait_ready()
    try:
        for name in ("csv-job", job):
            assert monitor.wait(client.jobs, client.storage, name, show_progress=False,
                                timeout_s=90).status == "done"
        lines = _by_uri(client, "csv-job", uris[:3])
        assert [lines[u]["columns"] for u in uris[:3]] == [
            {"sku": "100", "category": "cat0"}, {"sku": "101", "category": "cat1"},
            {"sku": "102", "category": "cat0"}]
        lines = _by_uri(client, job, [*uris, late])
        for i, uri in enumerate([*uris, late]):
            assert lines[uri]["columns"] == {"product_id": 9_000_000_000 + i,
                                             "price": table["price"][i].as_py(),
                                             "in_stock": table["in_stock"][i].as_py()}
        assert type(lines[uris[0]]["columns"]["product_id"]) is int
        assert not lines[late]["ok"] and all(lines[u]["ok"] for u in uris)

        client.storage.write(late, client.storage.read(uris[0]))  # the image arrives
        assert retry(job, client=client) == 1
        assert monitor.wait(client.jobs, client.storage, job, show_progress=False,
                            timeout_s=60).ok == 6
    finally:
        worker.stop()
    retried = _by_uri(client, job, [*uris, late])[late]
    assert retried["ok"] and retried["columns"]["product_id"] == 9_000_000_005
