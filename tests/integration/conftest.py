"""Fixtures for integration tests: one storage target per backend for the contract suite
(see tests/storage_targets.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.storage_targets import TARGETS, Target, local_target, s3_target


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """One backend and URI style per parameter; see tests/storage_targets.py."""
    if request.param == "s3":
        settings = request.getfixturevalue("s3_settings")
        return s3_target(settings, request.getfixturevalue("s3_bucket"))
    return local_target(request.param.removeprefix("local-"), tmp_path)
