"""The storage contract: the same tests against the local backend and S3 (moto over HTTP)."""

from __future__ import annotations

import inspect
import threading
import time
from pathlib import Path

import pytest

from rstream.shared.errors import (
    AccessDeniedError,
    NotFoundError,
    ObjectTooLarge,
    PreconditionFailed,
    TransientError,
)
from rstream.shared.storage import Storage
from tests.services import free_port
from tests.settings import make_settings
from tests.storage_targets import Target

UNICODE_NAME = "données/画像 #1?.jpg"  # non-ASCII, a space, and characters URIs reserve


def test_bytes_round_trip(target: Target) -> None:
    data = bytes(range(256)) * 64
    target.storage.write(target.uri("a/b.bin"), data)
    assert target.storage.read(target.uri("a/b.bin")) == data
    assert target.storage.stat(target.uri("a/b.bin")).size == len(data)


def test_an_object_above_max_bytes_is_refused_and_one_at_the_limit_is_read(
        target: Target) -> None:
    data = b"x" * 1000
    target.storage.write(target.uri("big.bin"), data)
    assert target.storage.read(target.uri("big.bin"), max_bytes=1000) == data
    with pytest.raises(ObjectTooLarge, match="1000 bytes, above RSTREAM_MAX_OBJECT_BYTES=999"):
        target.storage.read(target.uri("big.bin"), max_bytes=999)
    assert target.storage.read(target.uri("big.bin")) == data, "still readable without a limit"


def test_empty_object_round_trips(target: Target) -> None:
    target.storage.write(target.uri("empty"), b"")
    assert target.storage.exists(target.uri("empty"))
    assert target.storage.read(target.uri("empty")) == b""
    assert target.storage.stat(target.uri("empty")).size == 0


def test_unicode_key_round_trips_and_lists_as_written(target: Target) -> None:
    uri = target.uri(UNICODE_NAME)
    target.storage.write(uri, "é".encode())
    assert target.storage.read(uri) == "é".encode()
    assert list(target.storage.list(target.uri("données/"))) == [uri]


def test_overwrite_is_seen_whole_old_or_new(target: Target) -> None:
    uri = target.uri("flip")
    old, new = b"o" * 256 * 1024, b"n" * 256 * 1024
    target.storage.write(uri, old)
    done = threading.Event()

    def flip() -> None:
        for i in range(40):
            target.storage.write(uri, new if i % 2 == 0 else old)
        done.set()

    writer = threading.Thread(target=flip)
    writer.start()
    seen = set()
    while True:
        finished = done.is_set()
        seen.add(target.storage.read(uri))
        if finished:
            break
    writer.join()
    assert seen <= {old, new}


def test_exists_stat_and_delete(target: Target) -> None:
    uri = target.uri("x/y.txt")
    assert not target.storage.exists(uri)
    target.storage.write(uri, b"hello")
    assert target.storage.exists(uri)
    assert target.storage.stat(uri).size == 5
    target.storage.delete(uri)
    assert not target.storage.exists(uri)
    target.storage.delete(uri)  # deleting a missing key is not an error
    with pytest.raises(NotFoundError):
        target.storage.stat(uri)


def test_reading_a_missing_key_raises_not_found_naming_it(target: Target) -> None:
    with pytest.raises(NotFoundError) as info:
        target.storage.read(target.uri("missing/key.jpg"))
    assert target.where("missing/key.jpg") in str(info.value)


def test_open_binary_reads_the_object_as_a_seekable_file(target: Target) -> None:
    data = bytes(range(256)) * 16
    target.storage.write(target.uri("t/m.parquet"), data)
    with target.storage.open_binary(target.uri("t/m.parquet")) as file:
        file.seek(-4, 2)  # a Parquet reader starts from the footer
        assert file.read() == data[-4:]
        file.seek(0)
        assert file.read() == data
    with pytest.raises(NotFoundError) as info:
        target.storage.open_binary(target.uri("t/missing.parquet"))
    assert target.where("t/missing.parquet") in str(info.value)


def test_listing_crosses_pages_lazily(target: Target) -> None:
    names = [f"many/{i // 1000}/{i:04d}" for i in range(2500)]
    target.bulk_put(names)
    list_calls = _count_list_requests(target)

    assert inspect.isgenerator(target.storage.list(target.uri("many/")))  # not a list
    stream = target.storage.list(target.uri("many/"))
    first = next(stream)
    if list_calls is not None:
        assert list_calls == [1]  # one page of 1,000, not the whole listing
    # A key written after the stream started, in a part not yet listed, still shows up.
    target.storage.write(target.uri("many/2/9999"), b"late")
    rest = list(stream)

    listed = [first, *rest]
    expected = [target.uri(n) for n in [*names, "many/2/9999"]]
    assert sorted(listed) == sorted(expected)
    assert len(listed) == len(set(listed))
    if list_calls is not None:
        assert list_calls == [3]  # 2,501 keys: three pages


def test_listing_a_prefix_that_matches_nothing_is_empty(target: Target) -> None:
    target.storage.write(target.uri("a/1"), b"1")
    assert list(target.storage.list(target.uri("nothing/"))) == []
    assert list(target.storage.list(target.uri("a/1/deeper"))) == []
    assert list(target.storage.list(target.uri("b"))) == []


def test_listing_uses_string_prefixes_and_the_prefix_style(target: Target) -> None:
    for name in ("a/1", "a/2", "ab/3", "b/4"):
        target.storage.write(target.uri(name), b"")
    assert sorted(target.storage.list(target.uri("a/"))) == [target.uri("a/1"), target.uri("a/2")]
    assert sorted(target.storage.list(target.uri("a"))) == [
        target.uri("a/1"), target.uri("a/2"), target.uri("ab/3")]
    assert sorted(target.storage.list(target.base + "/")) == [
        target.uri(n) for n in ("a/1", "a/2", "ab/3", "b/4")]


def test_if_none_match_refuses_an_existing_key(target: Target) -> None:
    uri = target.uri("pointer.json")
    target.storage.write(uri, b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        target.storage.write(uri, b"second", if_none_match=True)
    assert target.storage.read(uri) == b"first"


def test_if_match_writes_only_over_the_version_it_read(target: Target) -> None:
    uri = target.uri("pointer.json")
    target.storage.write(uri, b"v1")
    _, stale = target.storage.read_versioned(uri)
    target.storage.write(uri, b"v2")
    with pytest.raises(PreconditionFailed):
        target.storage.write(uri, b"v3", if_match=stale)
    assert target.storage.read(uri) == b"v2"

    data, current = target.storage.read_versioned(uri)
    assert data == b"v2"
    target.storage.write(uri, b"v3", if_match=current)
    assert target.storage.read(uri) == b"v3"


def test_stat_etag_is_the_one_conditional_writes_take(target: Target) -> None:
    uri = target.uri("pointer.json")
    target.storage.write(uri, b"v1")
    etag = target.storage.stat(uri).etag
    assert etag == target.storage.read_versioned(uri)[1]
    target.storage.write(uri, b"v2", if_match=etag)
    assert target.storage.read(uri) == b"v2"


def test_if_match_on_a_deleted_key_is_a_lost_condition(target: Target) -> None:
    uri = target.uri("pointer.json")
    target.storage.write(uri, b"v1")
    _, etag = target.storage.read_versioned(uri)
    target.storage.delete(uri)
    with pytest.raises(PreconditionFailed):
        target.storage.write(uri, b"v2", if_match=etag)
    assert not target.storage.exists(uri)


def _count_list_requests(target: Target) -> list[int] | None:
    """For S3: a one-item list that counts the ListObjectsV2 requests the backend sends."""
    if target.kind != "s3":
        return None
    backend, _ = target.storage.resolve(target.base)
    calls = [0]

    def count(**_: object) -> None:
        calls[0] += 1

    backend.client.meta.events.register("before-call.s3.ListObjectsV2", count)  # type: ignore[attr-defined]
    return calls


def test_s3_bucket_outside_the_allow_list_is_refused_before_any_request(
        tmp_path: Path, aws_environment: None) -> None:
    # The endpoint is a closed port: any request would fail with a connection error, so an
    # AccessDeniedError proves that the refusal came first.
    closed = f"http://127.0.0.1:{free_port()}"
    storage = Storage(make_settings(
        storage_root=str(tmp_path), s3_endpoint_url=closed, allowed_buckets=("allowed",),
        s3_max_attempts=1, s3_connect_timeout=1.0))
    started = time.monotonic()
    refusals = [
        lambda: storage.read("s3://other/key"),
        lambda: storage.write("s3://other/key", b"x"),
        lambda: storage.exists("s3://other/key"),
        lambda: storage.stat("s3://other/key"),
        lambda: storage.delete("s3://other/key"),
        lambda: list(storage.list("s3://other/")),
    ]
    for refused in refusals:
        with pytest.raises(AccessDeniedError, match="RSTREAM_ALLOWED_BUCKETS"):
            refused()
    assert time.monotonic() - started < 0.5
    with pytest.raises(TransientError):  # the control: an allowed bucket does send a request
        storage.read("s3://allowed/key")
