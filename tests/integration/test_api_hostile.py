"""Hostile and careless clients, each finding of issue 27 tried the way it was found: through
a real ``rstream api`` process (tests/api.py), a real worker and a real Redis.

1. A Redis password in any form the URL allows never comes back: /readyz, /metrics, 503
   bodies, ``rstream config`` (and mask_url itself, for every form).
2. A URI with a newline or a NUL, inline or a file name in a listed folder, gets its own
   error line; the good images of its chunk are scored and the job ends.
3. With Redis down, /healthz answers at once however many /readyz wait, and /readyz and the
   routes answer 503 within a second, not after 27 s of retries.
4. The same job id with other inline URIs is 409; the same URIs are 200 "existing".
5. Resume refuses at once, with the reason, a source that is gone, and never reads the API
   host's own files; a submission that fails in the background marks its job failed, why.
6. Concurrent retries start one generation; a cancelled job is not retried; of concurrent
   creations one caller is told it created the job.
7. Without tokens, a page of another origin can change nothing, and a foreign Host is refused.
8. Body errors in the API's one shape; no absolute path of the API host in messages; no folder
   hints for a caller without the read scope; security headers; no /docs from a CDN; the
   dashboard drops ``#token=``; training options bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from rstream.producer.api.context import ApiContext
from rstream.producer.client import Client
from rstream.shared.errors import JobConflict
from rstream.shared.jobs.store import FAILED
from rstream.shared.storage import Storage
from tests.api import ADMIN, SUBMIT_ONLY, ApiProcess, poll_done
from tests.pipeline import good_images
from tests.services import REPO, free_port

SECRET = "pa@ss:w/rd-7f3a"


def _redis_down_url(port: int) -> str:
    """A URL to a port where no Redis listens, with a password in two of the forms redis-py
    takes (in the user info, percent-encoded, and raw as a query parameter)."""
    return f"redis://default:{quote(SECRET, safe='')}@127.0.0.1:{port}/0?password={SECRET}"


@pytest.fixture(scope="module")
def redis_down(api_stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[ApiProcess]:
    """An open API whose Redis does not answer (nothing listens on its port)."""
    settings = api_stack["settings"]
    log = tmp_path_factory.mktemp("down") / "api-down.log"
    api = ApiProcess(settings, log, RSTREAM_REDIS_URL=_redis_down_url(free_port()))
    yield api
    api.stop()


# 1. Secrets

def test_no_password_leaks_from_probes_metrics_503s_or_config(
        redis_down: ApiProcess, api_stack: dict[str, Any]) -> None:
    with redis_down.client() as http:
        answers = [http.get("/readyz"), http.get("/metrics"), http.get("/v1/jobs"),
                   http.get("/v1/jobs/any"), http.post("/v1/jobs", json={"uris": ["a.jpg"]})]
    assert [a.status_code for a in answers][:3] == [503, 503, 503]
    for answer in answers:
        for part in ("pa@ss", "pa%40ss", "w/rd", "7f3a"):
            assert part not in answer.text, answer.text
    assert "127.0.0.1" not in answers[0].text, "the unauthenticated /readyz names no host"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
    env["RSTREAM_REDIS_URL"] = _redis_down_url(6379)
    env["RSTREAM_S3_ENDPOINT_URL"] = f"http://AKIAX:{SECRET}@minio:9000"
    shown = subprocess.run([sys.executable, "-m", "rstream.producer.cli", "config"], env=env,
                           cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert "RSTREAM_REDIS_URL=redis://****@127.0.0.1:6379/0?password=****\n" in shown.stdout
    assert "7f3a" not in shown.stdout and "pa@ss" not in shown.stdout


# 2. Poison URIs

def test_a_uri_with_a_newline_or_a_nul_gets_its_own_line_and_the_job_ends(
        api_stack: dict[str, Any]) -> None:
    settings, model = api_stack["settings"], api_stack["model"]
    storage = Storage(settings)
    prefix = f"poison-{uuid.uuid4().hex[:6]}"
    good = []
    for name, blob in good_images(3, seed=11):
        storage.write(f"{prefix}/{name}", blob)
        good.append(f"{prefix}/{name}")
    # A file whose name holds a newline, in a folder the API lists.
    storage.write(f"{prefix}/bad\nname.jpg", good_images(1, seed=12)[0][1])
    inline = [good[0], "evil\nline.jpg", "nul\x00.jpg", good[1]]
    with api_stack["open"].client() as http:
        listed = http.post("/v1/jobs", json={"source": prefix, "model": model})
        sent = http.post("/v1/jobs", json={"uris": inline, "model": model})
        assert listed.status_code == sent.status_code == 202, (listed.text, sent.text)
        views = [poll_done(http, answer.json()["job"]) for answer in (listed, sent)]
        lines = [http.get(f"/v1/jobs/{view['job']}/results").text.splitlines()
                 for view in views]
    assert [(v["status"], v["ok"], v["failed"]) for v in views] == [("done", 3, 1),
                                                                    ("done", 2, 2)]
    inline_lines = {line["uri"]: line for line in map(json.loads, lines[1])}
    assert set(inline_lines) == set(inline), "one line per URI, the odd ones as they came"
    for odd in ("evil\nline.jpg", "nul\x00.jpg"):
        assert inline_lines[odd]["error"]["type"] == "InvalidURI"
    listed_lines = [json.loads(line) for line in lines[0]]
    assert [line["error"]["type"] for line in listed_lines if not line["ok"]] == ["InvalidURI"]


# 3. Health during an outage

def test_health_answers_and_routes_fail_fast_while_redis_is_down(
        redis_down: ApiProcess) -> None:
    # Old behaviour: each call rode out 27 s of Redis retries, and /readyz calls held the
    # request threads, /healthz behind them. The client's timeout is the assertion.
    results: list[int] = []

    def ready() -> None:
        with httpx.Client(base_url=redis_down.url, timeout=10) as http:
            results.append(http.get("/readyz").status_code)

    probes = [threading.Thread(target=ready) for _ in range(45)]
    for probe in probes:
        probe.start()
    with httpx.Client(base_url=redis_down.url, timeout=3) as http:
        assert http.get("/healthz").json() == {"ok": True}
        route = http.get("/v1/jobs")
    for probe in probes:
        probe.join(timeout=30)
    assert route.status_code == 503 and route.json()["error"]["type"] == "RedisUnavailable"
    assert results == [503] * 45


# 4. Same id, other URIs

def test_the_same_job_id_with_other_inline_uris_is_a_conflict(
        api_stack: dict[str, Any]) -> None:
    model, job = api_stack["model"], f"same-{uuid.uuid4().hex[:6]}"
    with api_stack["open"].client() as http:
        first = http.post("/v1/jobs", json={"uris": ["a.jpg"], "model": model, "job": job})
        again = http.post("/v1/jobs", json={"uris": ["a.jpg"], "model": model, "job": job})
        other = http.post("/v1/jobs", json={"uris": ["b.jpg"], "model": model, "job": job})
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 409)
    assert again.json()["existing"] is True
    assert other.json()["error"]["type"] == "JobConflict"


# 5. Background work

def test_resume_refuses_a_gone_source_at_once_and_never_reads_the_api_hosts_files(
        api_stack: dict[str, Any], tmp_path: Path) -> None:
    settings, model = api_stack["settings"], api_stack["model"]
    storage = Storage(settings)
    prefix = f"gone-{uuid.uuid4().hex[:6]}"
    for name, blob in good_images(2, seed=13):
        storage.write(f"{prefix}/{name}", blob)
    # A list file on this machine, outside the storage root, submitted from the CLI.
    local = tmp_path / "mine.txt"
    local.write_text(f"{prefix}/{good_images(2, seed=13)[0][0]}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
    env.update(settings.as_env())
    local_job = f"local-{uuid.uuid4().hex[:6]}"
    subprocess.run([sys.executable, "-m", "rstream.producer.cli", "submit", str(local),
                    "--job", local_job, "--model", model], env=env, cwd=tmp_path,
                   capture_output=True, text=True, timeout=120, check=True)
    with api_stack["open"].client() as http:
        job = http.post("/v1/jobs", json={"source": prefix, "model": model}).json()["job"]
        poll_done(http, job)
        for name in list(storage.list(prefix + "/")):
            storage.delete(name)
        (Path(settings.storage_root) / prefix).rmdir()
        gone = http.post(f"/v1/jobs/{job}/resume", json={})
        host_file = http.post(f"/v1/jobs/{local_job}/resume", json={})
    assert gone.status_code == 404 and prefix in gone.json()["error"]["message"]
    assert host_file.status_code == 403, host_file.text  # never read from this host
    assert "mine.txt" in host_file.json()["error"]["message"]


def test_a_submission_that_fails_in_the_background_marks_its_job_failed_with_why(
        api_stack: dict[str, Any]) -> None:
    settings = api_stack["settings"]
    client = Client(settings)
    job = f"bg-{uuid.uuid4().hex[:6]}"
    assert client.jobs.create(job, model="random:resnet18", results=settings.results,
                              source="x/", chunk_size=8)
    ctx = ApiContext(settings, client)

    def fails() -> None:
        raise OSError("the bucket went away")

    ctx.in_background(job, fails)
    deadline = time.monotonic() + 10
    while client.jobs.get(job).status != FAILED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    record = client.jobs.get(job)
    assert "the bucket went away" in record.last_error
    assert "the bucket went away" in record.submit_error


# 6. Atomic operations

def test_concurrent_retries_start_one_generation(api_stack: dict[str, Any]) -> None:
    # The race is in Redis (it was a read, then two writes): 20 threads on the real store,
    # all released at once, against a done job that no worker will reopen meanwhile.
    settings = api_stack["settings"]
    client = Client(settings)
    job = f"retries-{uuid.uuid4().hex[:6]}"
    client.jobs.create(job, model="random:resnet18", results=settings.results, source="x/",
                       chunk_size=8)
    assert client.jobs.end_submit(job), "nothing outstanding: done at once"
    start, outcomes = threading.Barrier(20), []

    def retry() -> None:
        start.wait()
        try:
            outcomes.append(client.jobs.start_retry(job))
        except JobConflict as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=retry) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [o for o in outcomes if isinstance(o, int)] == [1]
    assert client.jobs.get(job).generation == 1


def test_a_cancelled_job_is_not_retried(api_stack: dict[str, Any]) -> None:
    settings = api_stack["settings"]
    client = Client(settings)
    job = f"cancelled-{uuid.uuid4().hex[:6]}"
    client.jobs.create(job, model="random:resnet18", results=settings.results, source="x/",
                       chunk_size=8)
    with api_stack["open"].client() as http:
        assert http.post(f"/v1/jobs/{job}/cancel", json={}).json()["status"] == "cancelled"
        refused = http.post(f"/v1/jobs/{job}/retry", json={})
    assert refused.status_code == 409
    assert "was cancelled" in refused.json()["error"]["message"]
    assert client.jobs.get(job).status == "cancelled", "not left running"


def test_of_concurrent_creations_of_one_job_one_caller_created_it(
        api_stack: dict[str, Any]) -> None:
    model, job = api_stack["model"], f"race-{uuid.uuid4().hex[:6]}"
    clients = [httpx.Client(base_url=api_stack["open"].url, timeout=60) for _ in range(50)]
    start, codes = threading.Barrier(len(clients)), []

    def create(http: httpx.Client) -> None:
        start.wait()
        codes.append(http.post("/v1/jobs", json={"uris": ["r.jpg"], "model": model,
                                                 "job": job}).status_code)

    threads = [threading.Thread(target=create, args=(http,)) for http in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for http in clients:
        http.close()
    assert Counter(codes) == Counter({202: 1, 200: 49}), codes


# 7. Another origin, another Host

def test_without_tokens_another_origin_changes_nothing_and_a_foreign_host_is_refused(
        api_stack: dict[str, Any]) -> None:
    api = api_stack["open"]
    name = api_stack["model"].split("@")[0]
    with api.client() as http:
        before = http.get(f"/v1/models/{name}").json()["production"]
        form = http.post(f"/v1/models/{name}/rollback", content=b"x=1", headers={
            "content-type": "application/x-www-form-urlencoded",
            "origin": "http://127.0.0.1:1"})
        cross = http.post(f"/v1/models/{name}/rollback", json={},
                          headers={"origin": "http://evil.example.com"})
        plain = http.post(f"/v1/models/{name}/rollback", content=b"",
                          headers={"content-type": "text/plain"})
        rebinding = http.get("/v1/jobs", headers={"host": "evil.example.com"})
        after = http.get(f"/v1/models/{name}").json()["production"]
    assert (form.status_code, cross.status_code, plain.status_code) == (403, 403, 415)
    assert rebinding.status_code == 421
    assert before == after, "production untouched"
    for answer in (form, cross, plain, rebinding):
        assert set(answer.json()["error"]) == {"type", "message"}


# 8. The smaller ones

def test_body_errors_come_in_the_apis_one_shape(api_stack: dict[str, Any]) -> None:
    def chunked() -> Iterator[bytes]:
        for _ in range(2048):
            yield b" " * 1024

    with api_stack["open"].client() as http:
        json_type = {"content-type": "application/json"}
        answers = {
            "chunked, too large": http.post("/v1/jobs", content=chunked(), headers=json_type),
            "nested too deep": http.post("/v1/jobs", content=b"[" * 100_000 + b"]" * 100_000,
                                         headers=json_type),
            "not UTF-8": http.post("/v1/jobs", content=b'{"uris": ["\xff"]}', headers=json_type),
            "no such route": http.get("/v1/nope"),
        }
    assert {k: a.status_code for k, a in answers.items()} == {
        "chunked, too large": 413, "nested too deep": 400, "not UTF-8": 400, "no such route": 404}
    for answer in answers.values():
        assert set(answer.json()) == {"error"} and set(answer.json()["error"]) == {
            "type", "message"}


def test_messages_name_no_path_of_the_api_host_and_hints_need_the_read_scope(
        api_stack: dict[str, Any]) -> None:
    settings, model = api_stack["settings"], api_stack["model"]
    root = str(Path(settings.storage_root).resolve())
    Storage(settings).write("hinted-photos/a.jpg", b"x")
    api = api_stack["guarded"]
    with api.client(ADMIN) as admin, api.client(SUBMIT_ONLY) as submitter:
        outside = admin.post("/v1/jobs", json={"source": "../elsewhere", "model": model})
        near_admin = admin.post("/v1/jobs", json={"source": "hinted-photo", "model": model})
        near_submit = submitter.post("/v1/jobs", json={"source": "hinted-photo",
                                                       "model": model})
    for answer in (outside, near_admin, near_submit):
        assert root not in answer.text, answer.text
    assert "did you mean hinted-photos/" in near_admin.json()["error"]["message"]
    assert near_submit.status_code == 404 and "did you mean" not in near_submit.text


def test_security_headers_no_cdn_docs_the_token_dropped_and_bounded_training(
        api_stack: dict[str, Any]) -> None:
    with api_stack["open"].client() as http:
        page = http.get("/")
        docs = http.get("/docs")
        schema = http.get("/openapi.json")
        train = http.post("/v1/train", json={"options": {"batch_size": 10**9}})
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert "http" not in csp, "no third-party origin"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert docs.status_code == 404 and schema.status_code == 200
    assert "cdn" not in page.text.lower()
    assert "history.replaceState" in page.text and 'params.delete("token")' in page.text
    assert train.status_code == 400 and "batch_size" in train.json()["error"]["message"]
