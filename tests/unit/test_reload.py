"""ProductionTracker: follows the production pointer off the serving path, refuses bad loads."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rstream.shared.errors import ModelError, PermanentError, TransientError
from rstream.shared.models.registry import Registry
from rstream.shared.storage import Storage
from rstream.worker.serving.reload import ProductionTracker
from tests.settings import make_settings

V1, V2, BAD = (f"20261129T00000000000{i}Z-000{i}" for i in (1, 2, 3))


def registry_with(tmp_path: Path) -> Registry:
    return Registry(Storage(make_settings(storage_root=str(tmp_path))), "models")


def point(registry: Registry, version: str) -> None:
    registry.storage.write(registry.pointer_uri("m"), json.dumps({"version": version}).encode())


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_an_idle_process_loads_a_promotion_before_the_next_request(tmp_path: Path) -> None:
    registry = registry_with(tmp_path)
    point(registry, V1)
    loaded: list[str] = []
    tracker = ProductionTracker(registry, 0.05, loaded.append)
    try:
        assert tracker.version("m") == V1
        point(registry, V2)
        assert wait_for(lambda: f"m@{V2}" in loaded), "the watcher loads it with no request"
        assert tracker.version("m") == V2, "the first request after the load gets it"
    finally:
        tracker.close()


def test_a_version_that_fails_to_load_is_tried_once_and_never_served(tmp_path: Path) -> None:
    registry = registry_with(tmp_path)
    point(registry, V1)
    attempts: list[str] = []

    def load(key: str) -> None:
        attempts.append(key)
        if key == f"m@{BAD}":
            raise ModelError("m@bad: weights.safetensors is unreadable")

    tracker = ProductionTracker(registry, 0.02, load)
    try:
        assert tracker.version("m") == V1
        point(registry, BAD)
        assert wait_for(lambda: f"m@{BAD}" in attempts)
        time.sleep(0.2)  # ten more checks of the pointer
        assert tracker.version("m") == V1
        assert attempts.count(f"m@{BAD}") == 1
    finally:
        tracker.close()


def test_a_new_version_is_not_served_before_it_has_loaded(tmp_path: Path) -> None:
    registry = registry_with(tmp_path)
    point(registry, V1)
    release: list[bool] = []

    def slow_load(key: str) -> None:
        while key == f"m@{V2}" and not release:
            time.sleep(0.01)

    tracker = ProductionTracker(registry, 0.0, slow_load)
    try:
        assert tracker.version("m") == V1
        point(registry, V2)
        assert tracker.version("m") == V1, "V2 is still loading: V1 serves"
        release.append(True)
        assert wait_for(lambda: tracker.version("m") == V2)
    finally:
        tracker.close()


def test_a_transient_load_failure_is_tried_again_at_the_next_check(tmp_path: Path) -> None:
    registry = registry_with(tmp_path)
    point(registry, V1)
    attempts: list[str] = []

    def load(key: str) -> None:
        attempts.append(key)
        if key == f"m@{V2}" and attempts.count(key) <= 2:
            raise TransientError("s3://models/m: SlowDown (after retries)")

    tracker = ProductionTracker(registry, 0.02, load)
    try:
        assert tracker.version("m") == V1
        point(registry, V2)
        assert wait_for(lambda: tracker.version("m") == V2), attempts
        assert attempts.count(f"m@{V2}") == 3, "two transient failures, then it loaded"
    finally:
        tracker.close()


def test_a_corrupt_pointer_keeps_the_current_version_and_is_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = registry_with(tmp_path)
    point(registry, V1)
    tracker = ProductionTracker(registry, 0.01, lambda key: None)
    try:
        assert tracker.version("m") == V1
        with caplog.at_level(logging.INFO, logger="rstream.worker.serving.reload"):
            registry.storage.write(registry.pointer_uri("m"), b'{"version": ')  # torn write
            time.sleep(0.3)  # about thirty checks, by requests and by the watcher
            for _ in range(20):
                assert tracker.version("m") == V1
            corrupt = [r for r in caplog.records if "production.json is corrupt" in r.message]
            assert len(corrupt) == 1, [r.message for r in caplog.records]
            assert f"still serving m@{V1}" in corrupt[0].message
            point(registry, V2)
            assert wait_for(lambda: tracker.version("m") == V2)
        assert any("reads again" in r.message for r in caplog.records)
    finally:
        tracker.close()


def test_a_corrupt_pointer_with_nothing_serving_yet_is_an_error_with_the_reason(
        tmp_path: Path) -> None:
    registry = registry_with(tmp_path)
    registry.storage.write(registry.pointer_uri("m"), b"[1, 2]")
    tracker = ProductionTracker(registry, 0.01, lambda key: None)
    try:
        with pytest.raises(PermanentError, match=r"production\.json is corrupt: not a JSON object"):
            tracker.version("m")
    finally:
        tracker.close()
