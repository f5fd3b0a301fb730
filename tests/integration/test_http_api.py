"""The HTTP API with real parts: a uvicorn process (``rstream api``), a real worker, Redis,
moto's S3 over HTTP; and the dashboard in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from rstream.shared.jobs.manifest import manifest_uri
from rstream.shared.models.registry import Registry
from rstream.shared.storage import Storage
from tests.api import ADMIN, READ, SUBMIT, cells, cli, poll_done, render_page
from tests.pipeline import save_tiny_model, write_dataset
from tests.services import REPO, WorkerProcess, service_unavailable


def test_submit_over_http_then_results_equal_the_cli_results(api_stack: dict[str, Any]) -> None:
    settings, model = api_stack["settings"], api_stack["model"]
    prefix = f"http-{uuid.uuid4().hex[:6]}"
    write_dataset(Storage(settings), prefix, good=30)
    with api_stack["guarded"].client(SUBMIT) as http:
        created = http.post("/v1/jobs", json={"source": prefix, "model": model})
        assert created.status_code == 202, created.text
        job = created.json()["job"]
        assert created.json()["url"] == f"/v1/jobs/{job}"
        final = poll_done(http, job)
        assert (final["status"], final["ok"], final["failed"]) == ("done", 30, 10)
        assert final["models"] == {model: 30}
        streamed = http.get(f"/v1/jobs/{job}/results")
        failed = http.get(f"/v1/jobs/{job}/results", params={"failed": "true"})
    assert streamed.headers["content-type"].startswith("application/x-ndjson")
    assert streamed.text == cli(settings, "results", job).stdout
    assert failed.text == cli(settings, "results", job, "--failed").stdout
    assert len(failed.text.splitlines()) == 10


def test_inline_uris_and_an_idempotent_job_id(api_stack: dict[str, Any]) -> None:
    settings, model = api_stack["settings"], api_stack["model"]
    uris = write_dataset(Storage(settings), f"inline-{uuid.uuid4().hex[:6]}", good=4)[:4]
    job = f"inline-{uuid.uuid4().hex[:6]}"
    with api_stack["open"].client() as http:
        first = http.post("/v1/jobs", json={"uris": uris, "model": model, "job": job})
        assert first.status_code == 202 and first.json()["job"] == job, first.text
        again = http.post("/v1/jobs", json={"uris": uris, "model": model, "job": job})
        assert again.status_code == 200 and again.json()["existing"] is True
        other = http.post("/v1/jobs", json={"uris": uris, "model": model, "job": job,
                                             "chunk_size": 2})
        assert other.status_code == 409 and "already exists" in other.json()["error"]["message"]
        assert poll_done(http, job)["images"] == 4
        listed = http.get("/v1/jobs", params={"limit": 1})
        assert listed.status_code == 200 and len(listed.json()["jobs"]) == 1


def test_a_table_over_http_carries_its_columns_and_bad_options_are_refused(
        api_stack: dict[str, Any]) -> None:
    settings, model = api_stack["settings"], api_stack["model"]
    storage = Storage(settings)
    uris = write_dataset(storage, f"table-{uuid.uuid4().hex[:6]}", good=3)[:3]
    table = f"tables/{uuid.uuid4().hex[:6]}.csv"
    storage.write(table, ("sku,url\n" + "".join(f"s{i},{u}\n" for i, u in
                                                 enumerate(uris))).encode())
    body = {"source": table, "model": model, "uri_column": "url", "keep": ["sku"],
            "results_format": "parquet"}
    with api_stack["open"].client() as http:
        created = http.post("/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        job = created.json()["job"]
        poll_done(http, job)
        lines = http.get(f"/v1/jobs/{job}/results").text.splitlines()
        assert sorted(json.loads(line)["columns"]["sku"] for line in lines) == ["s0", "s1", "s2"]
        deadline = time.monotonic() + 30  # the finisher writes it just after the record
        while not storage.exists(manifest_uri(settings.results, job)):
            assert time.monotonic() < deadline, "no manifest"
            time.sleep(0.1)
        manifest = json.loads(storage.read(manifest_uri(settings.results, job)))
        assert manifest["files"] == [{"file": "scores-00000.parquet", "rows": 3}]
        for change, status, text in [({"format": "xlsx"}, 422, "format"),
                                     ({"results_format": "csv"}, 422, "results_format"),
                                     ({"keep": ["url"]}, 400, "names the URI column"),
                                     ({"keep": ["price"]}, 400, "no column 'price'")]:
            refused = http.post("/v1/jobs", json={**body, **change})
            assert refused.status_code == status, refused.text
            assert text in refused.json()["error"]["message"]


def test_tokens_and_scopes(api_stack: dict[str, Any]) -> None:
    api = api_stack["guarded"]
    body = {"uris": ["a.jpg"], "model": api_stack["model"]}
    with api.client() as anonymous, api.client("w" * 20) as wrong, api.client(READ) as reader:
        missing = anonymous.get("/v1/jobs")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert wrong.get("/v1/jobs").status_code == 401
        assert reader.get("/v1/jobs").status_code == 200
        refused = reader.post("/v1/jobs", json=body)
        assert refused.status_code == 403 and "submit scope" in refused.json()["error"]["message"]
        assert reader.post("/v1/train", json={}).status_code == 403
        assert anonymous.get("/healthz").status_code == 200, "health needs no token"


@pytest.mark.parametrize(("source", "status", "text"), [
    ("../outside", 403, "outside the storage root"),
    ("file:///etc/passwd", 403, "outside the storage root"),
    ("/etc/passwd.txt", 403, "outside the storage root"),
    ("http://169.254.169.254/latest/meta-data/", 400, "unsupported scheme http://"),
    ("s3://someone-elses-bucket/x/", 403, "not in RSTREAM_ALLOWED_BUCKETS"),
    ("nowhere", 404, "no such folder"),
])
def test_sources_go_through_the_storage_checks(api_stack: dict[str, Any], source: str,
                                               status: int, text: str) -> None:
    with api_stack["open"].client() as http:
        response = http.post("/v1/jobs", json={"source": source, "model": api_stack["model"]})
    assert response.status_code == status, response.text
    assert text in response.json()["error"]["message"]


def test_a_list_file_on_the_api_host_is_never_read(api_stack: dict[str, Any],
                                                   tmp_path: Path) -> None:
    local = tmp_path / "secret-list.txt"  # exists on this machine, outside the storage root
    local.write_text("/etc/shadow\n")
    with api_stack["open"].client() as http:
        response = http.post("/v1/jobs", json={"source": str(local), "model": api_stack["model"]})
    assert response.status_code in (403, 404), response.text


def test_bodies_are_validated_and_limited(api_stack: dict[str, Any]) -> None:
    with api_stack["open"].client() as http:
        big = http.post("/v1/jobs", content=b"{" + b" " * (10 * 1024 * 1024) + b"}",
                        headers={"content-type": "application/json"})
        assert big.status_code == 413 and big.json()["error"]["type"] == "BodyTooLarge"
        malformed = http.post("/v1/jobs", content=b"{not json",
                              headers={"content-type": "application/json"})
        assert malformed.status_code == 400
        assert malformed.json()["error"]["type"] == "MalformedJSON"
        bad_field = http.post("/v1/jobs", json={"source": "x/", "chunk_size": 0})
        assert bad_field.status_code == 422
        assert bad_field.json()["error"]["fields"][0]["field"] == "chunk_size"
        both = http.post("/v1/jobs", json={"source": "x/", "uris": ["a"]})
        assert both.status_code == 422 and "exactly one of source and uris" in both.text
        model = http.post("/v1/jobs", json={"source": "x/", "model": "random:resnet19"})
        assert model.status_code == 400 and "resnet19" in model.json()["error"]["message"]
        unknown = http.get("/v1/jobs/no-such-job")
        assert unknown.status_code == 404
        assert http.get("/v1/watches").json() == {"watches": []}


def test_models_promote_rollback_and_train(api_stack: dict[str, Any]) -> None:
    settings, api = api_stack["settings"], api_stack["guarded"]
    registry = Registry(Storage(settings), settings.models)
    name = api_stack["model"].split("@")[0]
    second = save_tiny_model(settings).split("@")[1]
    first = api_stack["model"].split("@")[1]
    registry.promote(name, first)
    with api.client(ADMIN) as admin, api.client(READ) as reader:
        listed = reader.get("/v1/models").json()["models"]
        assert {"name": name, "production": first} in listed
        assert reader.post(f"/v1/models/{name}/promote", json={"version": second}
                           ).status_code == 403
        promoted = admin.post(f"/v1/models/{name}/promote", json={"version": second})
        assert promoted.json() == {"name": name, "production": second, "changed": True}
        same = admin.post(f"/v1/models/{name}/promote", json={"version": second})
        assert same.json()["changed"] is False
        back = admin.post(f"/v1/models/{name}/rollback")
        assert back.json()["production"] == first
        detail = reader.get(f"/v1/models/{name}").json()
        assert detail["production"] == first and len(detail["versions"]) >= 2
        refused = admin.post("/v1/train", json={"options": {"nope": 1}})
        assert refused.status_code == 400 and "'nope' is unknown" in refused.text
        run = admin.post("/v1/train", json={"name": "other", "epochs": 1})
        assert run.status_code == 202, run.text
        state = reader.get(run.json()["url"]).json()
        assert state["status"] == "queued"
    assert registry.production(name) == first


def test_health_readiness_and_metrics(api_stack: dict[str, Any]) -> None:
    with api_stack["open"].client() as http:
        assert http.get("/readyz").json() == {"ready": True}
        text = http.get("/metrics").text
    assert 'rstream_queue_depth{queue="infer"}' in text
    assert 'rstream_queue_oldest_age_seconds{queue="infer"}' in text
    assert 'rstream_jobs{state="done"}' in text and "rstream_redis_up 1.0" in text


def test_the_api_refuses_to_serve_the_network_without_tokens(api_stack: dict[str, Any]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
    env.update(api_stack["settings"].as_env())
    env["RSTREAM_API_HOST"] = "0.0.0.0"
    result = subprocess.run([sys.executable, "-m", "rstream.producer.cli", "api"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "without any token would let anyone on the network submit" in result.stderr


def test_the_dashboard_shows_jobs_failures_labels_and_models(api_stack: dict[str, Any],
                                                             tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        service_unavailable("chromium is not installed (apt-get install chromium)")
    settings, model = api_stack["settings"], api_stack["model"]
    prefix = f"dash-{uuid.uuid4().hex[:6]}"
    write_dataset(Storage(settings), prefix, good=30)
    with api_stack["open"].client() as http:
        done = http.post("/v1/jobs", json={"source": prefix, "model": model}).json()["job"]
        final = poll_done(http, done)
        api_stack["worker"].stop()  # nothing consumes now: the next job stays in flight
        try:
            flight = http.post("/v1/jobs", json={"source": prefix, "model": model,
                                                 "chunk_size": 4}).json()["job"]
            dom = render_page(chromium, f"{api_stack['open'].url}/#job={done}", tmp_path)
            shot = tmp_path / "dashboard.png"
            render_page(chromium, f"{api_stack['open'].url}/#job={done}", tmp_path, screenshot=shot)
        finally:
            api_stack["worker"] = WorkerProcess(settings, tmp_path / "again.log", "api2")
            api_stack["worker"].wait_ready()
        summary = http.get(f"/v1/jobs/{done}/summary").json()
    assert f'data-job="{done}"' in dom and f'data-job="{flight}"' in dom
    row = dom.split(f'data-job="{done}"', 1)[1].split("</tr>", 1)[0]
    assert "40/40" in row and ">done<" in row and '<td class="failed">10</td>' in row
    flight_row = dom.split(f'data-job="{flight}"', 1)[1].split("</tr>", 1)[0]
    assert ">running<" in flight_row and "0/40" in flight_row
    failures = dom.split('id="failures"', 1)[1].split("</table>", 1)[0]
    assert failures.count('class="failure"') == len(summary["failures"]) >= 5
    assert sum(int(c) for c in cells(failures, "count")) == final["failed"] == 10
    labels = dom.split('id="labels"', 1)[1].split("</section>", 1)[0]
    assert sum(int(c) for c in cells(labels, "count", tag="span")) == final["ok"] == 30
    assert f'data-model="{model.split("@")[0]}"' in dom and model.split("@")[1] in dom
    assert shot.stat().st_size > 10_000
    out = REPO / "docs" / "dashboard.png"
    if os.environ.get("SAVE_DASHBOARD_SCREENSHOT"):  # refresh docs/dashboard.png
        out.parent.mkdir(exist_ok=True)
        shutil.copy(shot, out)
