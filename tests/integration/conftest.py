"""Fixtures for integration tests: one storage target per backend for the contract suite
(see tests/storage_targets.py), and a wheel of this checkout, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import REPO, in_ci, service_unavailable
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
