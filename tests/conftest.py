"""Fixtures every test may use: settings from an empty environment, and real services.

Services (the moto S3 server, a private ``redis-server``; see tests/services.py, which the
benchmarks share) are started by session fixtures.
When one cannot start, the test that asked for it is skipped with the reason, except under
``CI=true``, where it fails: CI must never pass by skipping. Use :func:`service_unavailable`
for any new service fixture so that rule holds everywhere. Helpers that tests import live in
named modules (``tests/services.py``, ``tests/settings.py``, ``tests/pipeline.py``, ...), never
here.

- ``moto_server``: the endpoint URL of moto's S3 server (real HTTP on a free loopback port),
  with dummy AWS credentials set for the whole session.
- ``s3_admin``: a plain boto3 client on that server, for setting up and inspecting buckets.
- ``s3_bucket`` / ``s3_settings``: a new, empty bucket per test and settings pointing at it.
- ``redis_server``: the URL (``redis://127.0.0.1:PORT/0``) of a private ``redis-server``
  started for the session with persistence off; see the fixture's docstring.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rstream.shared.settings import Settings
from tests.services import RedisServer, ServiceUnavailable, moto_server, service_unavailable
from tests.settings import make_settings

INTEGRATION = Path(__file__).parent / "integration"


class _NoFolderNames(importlib.abc.MetaPathFinder):
    """The three folders install as ``rstream.producer``, ``rstream.shared`` and
    ``rstream.worker``; the checkout's root is on ``sys.path`` in a test run, so ``import
    shared`` would load a second copy of every module it reaches. It fails here instead."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".", maxsplit=1)[0] in ("producer", "shared", "worker"):
            raise ImportError(f"import rstream.{name}, not {name}: the checkout's folders "
                              "install under rstream")


sys.meta_path.insert(0, _NoFolderNames())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration/ is an integration test, by folder."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``gpu`` test skips without a CUDA device (torch is imported only for those)."""
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")


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


@pytest.fixture(scope="session", name="moto_server")
def moto_server_fixture(aws_environment: None) -> Iterator[str]:
    """The endpoint URL of moto's S3 server, running in a thread for the whole session."""
    try:
        with moto_server() as url:
            yield url
    except ServiceUnavailable as exc:
        service_unavailable(str(exc))


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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of a private ``redis-server`` for this session: ``redis://127.0.0.1:PORT/0``.

    It listens on a free loopback port with persistence off (``--save ''
    --appendonly no``) in its own temp directory, so tests never touch the developer's Redis
    on 6379. It is shared by the whole session: give each test its own keys (a unique prefix
    or job id) or flush it yourself. It is stopped (SIGTERM, then SIGKILL) at the end.
    Without ``redis-server`` on PATH the test is skipped, or fails under ``CI=true``.
    """
    try:
        server = RedisServer().start()
    except ServiceUnavailable as exc:
        service_unavailable(str(exc))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread while a test trains or scores in-process: the same numbers on
    any machine, and the two shared cores are not oversubscribed next to worker processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
