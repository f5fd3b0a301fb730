"""The registry's storage layout: versions, production pointers and names (local storage)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rstream.shared.errors import ConfigError, NotFoundError
from rstream.shared.models.refs import VERSION_RE
from rstream.shared.models.registry import (
    META_NAME,
    PRODUCTION_NAME,
    WEIGHTS_NAME,
    Registry,
    new_version,
)
from rstream.shared.names import MODEL_NAME
from rstream.shared.storage import Storage
from tests.settings import make_settings


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(Storage(make_settings(storage_root=str(tmp_path))), "models")


def _publish(registry: Registry, name: str, version: str, *, meta: bool = True) -> None:
    registry.storage.write(registry.weights_uri(name, version), b"weights")
    if meta:
        registry.storage.write(registry.meta_uri(name, version), json.dumps({"arch": "r"}).encode())


def test_layout_paths() -> None:
    registry = Registry(Storage(make_settings()), "s3://bucket/models")
    version = "20261127T195512123456Z-3f2a"
    assert registry.weights_uri("cats", version) == f"s3://bucket/models/cats/{version}/{WEIGHTS_NAME}"
    assert registry.meta_uri("cats", version) == f"s3://bucket/models/cats/{version}/{META_NAME}"
    assert registry.pointer_uri("cats") == f"s3://bucket/models/cats/{PRODUCTION_NAME}"


def test_new_versions_match_the_pattern_and_sort_by_time() -> None:
    early = new_version(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
    late = new_version(datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC))
    assert early.startswith("20260102T030405000006Z-")
    assert VERSION_RE.match(early) and VERSION_RE.match(new_version())
    assert early < late


def test_versions_are_listed_only_once_their_meta_exists(registry: Registry) -> None:
    v1, v2, v3 = (f"2026010{i}T000000000000Z-aaaa" for i in (1, 2, 3))
    _publish(registry, "cats", v2)
    _publish(registry, "cats", v1)
    _publish(registry, "cats", v3, meta=False)  # weights written, meta.json not yet
    registry.storage.write("models/cats/not-a-version/meta.json", b"{}")
    _publish(registry, "cats2", "20260109T000000000000Z-bbbb")  # a longer name, same prefix
    assert registry.versions("cats") == [v1, v2]
    assert registry.versions("dogs") == []


def test_read_meta_of_a_missing_version_names_the_fix(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="rstream models ls cats"):
        registry.read_meta("cats", "20260101T000000000000Z-aaaa")


def test_production_pointer_is_read_with_its_etag(registry: Registry) -> None:
    assert registry.read_pointer("cats") == (None, None)
    with pytest.raises(NotFoundError, match="rstream models promote cats@VERSION"):
        registry.production("cats")
    pointer = {"version": "20260101T000000000000Z-aaaa", "previous": []}
    registry.storage.write(registry.pointer_uri("cats"), json.dumps(pointer).encode())
    read, etag = registry.read_pointer("cats")
    assert read == pointer
    assert etag == registry.storage.read_versioned(registry.pointer_uri("cats"))[1]
    assert registry.production("cats") == "20260101T000000000000Z-aaaa"


def test_names_are_models_with_a_version_or_a_pointer(registry: Registry) -> None:
    _publish(registry, "cats", "20260101T000000000000Z-aaaa")
    registry.storage.write(registry.pointer_uri("dogs"), b'{"version": "x"}')
    registry.storage.write("models/.hidden-file", b"")
    assert registry.names() == ["cats", "dogs"]


@pytest.mark.parametrize("bad", ["", "../up", "a/b", "-lead", "x" * 65, "sp ace"])
def test_bad_model_names_are_refused(registry: Registry, bad: str) -> None:
    with pytest.raises(ConfigError, match="model name"):
        MODEL_NAME.check(bad)
    with pytest.raises(ConfigError):
        registry.versions(bad)


def test_good_model_names_pass() -> None:
    for name in ("cats", "resnet18_v2.1", "A-b", "x" * 64):
        assert MODEL_NAME.check(name) == name
