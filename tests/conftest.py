"""Fixtures every test may use: settings from an empty environment, and real services.

Services (the moto S3 server, a private ``redis-server``) are started by session fixtures.
When one cannot start, the test that asked for it is skipped with the reason, except under
``CI=true``, where it fails: CI must never pass by skipping. Use :func:`service_unavailable`
for any new service fixture so that rule holds everywhere.

- ``make_settings(**overrides)``: Settings from an EMPTY environment plus overrides, so that no
  test depends on the developer's ``RSTREAM_*`` variables.
- ``moto_server``: the endpoint URL of moto's S3 server (real HTTP on a free loopback port),
  with dummy AWS credentials set for the whole session.
- ``s3_admin``: a plain boto3 client on that server, for setting up and inspecting buckets.
- ``s3_bucket`` / ``s3_settings``: a new, empty bucket per test and settings pointing at it.
- ``redis_server``: the URL (``redis://127.0.0.1:PORT/0``) of a private ``redis-server``
  started for the session with persistence off; see the fixture's docstring.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from shared.settings import Settings

REDIS_START_TIMEOUT_S = 10.0


def in_ci() -> bool:
    """True when the environment says this is CI, where missing services are failures."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def service_unavailable(reason: str) -> NoReturn:
    """Skip the current test, or fail it under ``CI=true``."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service is a failure, not a skip)",
                    pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(**overrides: Any) -> Settings:
    """Settings from an empty environment plus ``overrides`` (field names, typed values)."""
    return Settings.from_env({}, **overrides)


@pytest.fixture(scope="session")
def aws_environment() -> Iterator[None]:
    """Dummy AWS credentials for the session; the developer's ~/.aws is never read."""
    fake = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AWS_PROFILE", raising=False)
        for name, value in fake.items():
            mp.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def moto_server(aws_environment: None) -> Iterator[str]:
    """The endpoint URL of moto's S3 server, running in a thread for the whole session."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        service_unavailable(f"moto[server] is not installed ({exc}): pip install -e '.[dev]'")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_admin(moto_server: str) -> Any:
    """A plain boto3 S3 client on the moto server, for setting up and inspecting buckets."""
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=moto_server, region_name="us-east-1")


@pytest.fixture
def s3_bucket(s3_admin: Any) -> str:
    """A new, empty bucket on the moto server; its name is unique to this test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_settings(moto_server: str, s3_bucket: str, tmp_path: Path) -> Settings:
    """Settings whose S3 endpoint is the moto server and whose only allowed bucket is new."""
    return make_settings(
        storage_root=str(tmp_path / "root"),
        s3_endpoint_url=moto_server,
        allowed_buckets=(s3_bucket,),
        s3_max_attempts=3,
        s3_connect_timeout=2.0,
        s3_read_timeout=5.0,
    )


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of a private ``redis-server`` for this session: ``redis://127.0.0.1:PORT/0``.

    It listens on a free loopback port with persistence off (``--save ''
    --appendonly no``) in its own temp directory, so tests never touch the developer's Redis
    on 6379. It is shared by the whole session: give each test its own keys (a unique prefix
    or job id) or flush it yourself. It is stopped (SIGTERM, then SIGKILL) at the end.
    Without ``redis-server`` on PATH the test is skipped, or fails under ``CI=true``.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        service_unavailable(
            "redis-server is not installed: install it (apt-get install redis-server) to run "
            "the tests that need Redis")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="rstream-redis-")
    log = Path(workdir) / "redis.log"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", workdir, "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while not _redis_answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                service_unavailable(
                    f"redis-server did not start on port {port} "
                    f"(exit code {process.poll()}): {detail}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread while a test trains or scores in-process: the same numbers on
    any machine, and the two shared cores are not oversubscribed next to worker processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
