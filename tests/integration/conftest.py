"""Fixtures for integration tests: one storage target per backend for the contract suite
(see tests/storage_targets.py), a wheel of this checkout, and the HTTP API beside a worker,
each built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api import TOKENS, ApiProcess
from tests.pipeline import pipeline_settings, save_tiny_model
from tests.services import REPO, WorkerProcess, in_ci, service_unavailable
from tests.storage_targets import TARGETS, Target, local_target, s3_target

WHEEL_BUILD_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel`` of this checkout (no dependencies), as a user's ``pip install`` builds it."""
    out = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RSTREAM_", "PYTHON"))}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(out), str(REPO)], cwd=out, env=env, capture_output=True,
                           text=True, timeout=WHEEL_BUILD_TIMEOUT_S, check=False)
    if built.returncode != 0:
        message = f"pip wheel failed: {built.stderr[-2000:]}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        service_unavailable(message)
    (found,) = out.glob("rstream-*.whl")
    return found


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """One backend and URI style per parameter; see tests/storage_targets.py."""
    if request.param == "s3":
        settings = request.getfixturevalue("s3_settings")
        return s3_target(settings, request.getfixturevalue("s3_bucket"))
    return local_target(request.param.removeprefix("local-"), tmp_path)


@pytest.fixture(scope="session")
def api_stack(redis_server: str, moto_server: str, s3_admin: Any,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Settings, a tiny model, a worker, an open API (127.0.0.1, no token) and one with tokens
    (tests/api.py), for every test of the HTTP API; Redis database 15 is theirs (no other test may
    use it: its worker runs all session)."""
    root = tmp_path_factory.mktemp("api-root")
    bucket = f"api-{uuid.uuid4().hex[:10]}"
    s3_admin.create_bucket(Bucket=bucket)
    settings = pipeline_settings(redis_server.rsplit("/", 1)[0] + "/15", root,
                                 s3_endpoint_url=moto_server, allowed_buckets=(bucket,),
                                 s3_max_attempts=2, chunk_size=8)
    model = save_tiny_model(settings)
    logs = root.parent
    worker = WorkerProcess(settings, logs / "api-worker.log", "api").wait_ready()
    open_api = ApiProcess(settings, logs / "api-open.log")
    guarded = ApiProcess(settings, logs / "api-tokens.log", RSTREAM_API_TOKENS=TOKENS)
    state = {"settings": settings, "model": model, "open": open_api, "guarded": guarded,
             "bucket": bucket, "worker": worker}
    try:
        yield state
    finally:
        open_api.stop()
        guarded.stop()
        state["worker"].stop()
