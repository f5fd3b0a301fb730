"""The service fixtures other tests stand on: a private Redis, moto's S3, the skip-or-fail rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]


def test_redis_server_is_private(redis_server: str) -> None:
    client = redis.Redis.from_url(redis_server)
    assert client.ping()
    assert not redis_server.endswith(":6379/0")  # never the developer's Redis
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}


def test_moto_server_speaks_s3_over_http(moto_server: str, s3_bucket: str, s3_admin: Any) -> None:
    assert moto_server.startswith("http://127.0.0.1:")
    s3_admin.put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert s3_admin.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"


def _run_redis_test_without_redis_server(ci: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(Path(sys.executable).parent)  # no redis-server on this PATH
    if ci:
        env["CI"] = ci
    test = f"{Path(__file__).relative_to(ROOT)}::{test_redis_server_is_private.__name__}"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", test],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_missing_service_skips_with_its_reason() -> None:
    result = _run_redis_test_without_redis_server(ci="")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "redis-server is not installed" in result.stdout


def test_a_missing_service_fails_under_ci() -> None:
    result = _run_redis_test_without_redis_server(ci="true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout
    assert "CI=true" in result.stdout
