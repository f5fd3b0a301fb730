"""ProductionTracker: follows the production pointer off the serving path, refuses bad loads."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from shared.errors import ModelError
from shared.registry import Registry
from shared.storage import Storage
from tests.conftest import make_settings
from worker.reload import ProductionTracker


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
    point(registry, "v1")
    loaded: list[str] = []
    tracker = ProductionTracker(registry, 0.05, loaded.append)
    try:
        assert tracker.version("m") == "v1"
        point(registry, "v2")
        assert wait_for(lambda: "m@v2" in loaded), "the watcher loads it with no request"
        assert tracker.version("m") == "v2", "the first request after the load gets it"
    finally:
        tracker.close()


def test_a_version_that_fails_to_load_is_tried_once_and_never_served(tmp_path: Path) -> None:
    registry = registry_with(tmp_path)
    point(registry, "v1")
    attempts: list[str] = []

    def load(key: str) -> None:
        attempts.append(key)
        if key == "m@bad":
            raise ModelError("m@bad: weights.safetensors is unreadable")

    tracker = ProductionTracker(registry, 0.02, load)
    try:
        assert tracker.version("m") == "v1"
        point(registry, "bad")
        assert wait_for(lambda: "m@bad" in attempts)
        time.sleep(0.2)  # ten more checks of the pointer
        assert tracker.version("m") == "v1"
        assert attempts.count("m@bad") == 1
    finally:
        tracker.close()


def test_a_new_version_is_not_served_before_it_has_loaded(tmp_path: Path) -> None:
    registry = registry_with(tmp_path)
    point(registry, "v1")
    release: list[bool] = []

    def slow_load(key: str) -> None:
        while key == "m@v2" and not release:
            time.sleep(0.01)

    tracker = ProductionTracker(registry, 0.0, slow_load)
    try:
        assert tracker.version("m") == "v1"
        point(registry, "v2")
        assert tracker.version("m") == "v1", "v2 is still loading: v1 serves"
        release.append(True)
        assert wait_for(lambda: tracker.version("m") == "v2")
    finally:
        tracker.close()
