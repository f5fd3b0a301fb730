"""Watch mode without services: window ids, the listing / seen-record merge, stream entries,
names, the command line, and the optional metrics."""

from __future__ import annotations

import argparse
import socket
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rstream.producer.cli import build_parser
from rstream.producer.cli.watch import _name_of, build_spec
from rstream.producer.watch.feeds import Change, diff, member
from rstream.producer.watch.metrics import WatchMetrics
from rstream.producer.watch.record import WatchOptions
from rstream.producer.watch.stream import _parse
from rstream.producer.watch.windows import check_window, window_job, window_start
from rstream.shared.errors import ConfigError, PermanentError
from rstream.shared.names import WATCH_NAME
from rstream.shared.storage import Storage
from tests.services import free_port
from tests.settings import make_settings

T0 = 1_800_000_000  # 2027-01-15 08:00:00 UTC


@pytest.mark.parametrize(("window", "job"), [
    (3600, "watch-n-2027011508"), (86400, "watch-n-2027011500"),
    (300, "watch-n-202701150805"), (20, "watch-n-20270115080520")])
def test_a_window_job_is_named_after_its_start_to_the_precision_it_needs(
        window: int, job: str) -> None:
    now = T0 + 5 * 60 + 27  # 08:05:27
    assert window_job("n", window_start(now, window), window) == job


def test_windows_tile_a_day() -> None:
    assert window_start(T0 + 3599, 3600) == T0 and window_start(T0 + 3600, 3600) == T0 + 3600
    for bad in (0, 7, 7200 * 7):
        with pytest.raises(ConfigError, match="divisor of 86400"):
            check_window(bad)


def test_the_merge_finds_new_rewritten_and_deleted_keys() -> None:
    listed = [("a", "1"), ("b", "2"), ("d", "9"), ("e", "5")]
    seen = [("a", "1"), ("b", "1"), ("c", "3"), ("e", "5"), ("f", "6")]
    assert list(diff(listed, seen)) == [
        Change("b", "2", "1"), Change("c", None, "3"), Change("d", "9", None),
        Change("f", None, "6")]
    assert list(diff([], [("a", "1")])) == [Change("a", None, "1")]
    assert list(diff([("a", "1")], [])) == [Change("a", "1", None)]


def test_the_merge_refuses_a_listing_out_of_key_order() -> None:
    with pytest.raises(PermanentError, match="not in key order"):
        list(diff([("b", "1"), ("a", "1")], []))


def test_seen_record_members_sort_by_key_as_listings_do() -> None:
    keys = ["a", "a-b", "a/b", "a0", "ab", "b", "é"]
    in_key_order = sorted(keys, key=lambda k: k.encode())
    assert sorted(member(k, "zz").encode() for k in keys) == [
        member(k, "zz").encode() for k in in_key_order]


@pytest.mark.parametrize(("fields", "expected"), [
    ({b"uri": b"s3://b/a.jpg"}, ("s3://b/a.jpg", None, "")),
    ({b"uri": b" in/a.jpg ", b"etag": b'"abc"'}, ("in/a.jpg", '"abc"', "")),
    ({b"path": b"a.jpg"}, ("", None, "no uri field: add entries with XADD KEY * uri URI")),
    (None, ("", None, "the entry is empty or was deleted before it was read")),
])
def test_stream_entries_are_read_or_refused_with_why(
        fields: dict[bytes, bytes] | None, expected: tuple[str, str | None, str]) -> None:
    assert _parse(fields) == expected


@pytest.mark.parametrize("raw", [b"", b"a\nb", b"x" * 5000, b"\xff\xfe"])
def test_a_stream_entry_that_is_not_a_uri_is_refused(raw: bytes) -> None:
    uri, _, reason = _parse({b"uri": raw})
    assert uri == "" and reason


def test_watch_names_are_checked_and_derived_from_the_folder() -> None:
    assert _name_of("s3://bucket/landing/photos/") == "photos"
    assert _name_of("s3://bucket/") == "bucket"
    assert _name_of("in coming/") == "in-coming"
    with pytest.raises(ConfigError, match="--name"):
        _name_of("")
    for bad in ("", "-x", "a:b", "x" * 65, "a b"):
        with pytest.raises(ConfigError, match="watch name"):
            WATCH_NAME.check(bad)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_the_command_line_of_watch_and_of_status_without_a_job() -> None:
    args = parse("watch", "s3://b/in/", "--model", "m", "--window", "900", "--interval",
                 "2.5", "--ordered", "--metrics-port", "9105")
    assert (args.source, args.window, args.interval, args.ordered, args.metrics_port) == (
        "s3://b/in/", 900, 2.5, True, 9105)
    assert parse("watch", "--stream", "landing").stream == "landing"
    assert parse("status").job is None
    for bad in (["watch", "--interval", "0"], ["watch", "--window", "x"]):
        with pytest.raises(SystemExit):
            parse(*bad)


def spec_of(tmp_path: Path, *argv: str) -> Any:
    settings = make_settings(storage_root=str(tmp_path), model="random:resnet18")
    client = SimpleNamespace(storage=Storage(settings), settings=settings)
    return build_spec(parse("watch", *argv), settings, client)  # type: ignore[arg-type]


def test_a_watch_needs_one_source_a_folder_or_a_stream(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "list.txt").write_text("a.jpg\n")
    spec = spec_of(tmp_path, "in")
    assert (spec.name, spec.options) == ("in", WatchOptions(
        source="in/", model="random:resnet18", window_s=3600, ordered=False, chunk_size=64,
        results="results"))
    assert spec_of(tmp_path, "--stream", "landing").options.source == "stream:landing"
    with pytest.raises(ConfigError, match="give exactly one"):
        spec_of(tmp_path, "in", "--stream", "landing")
    with pytest.raises(ConfigError, match="give exactly one"):
        spec_of(tmp_path)
    with pytest.raises(ConfigError, match="--ordered is for a listed folder"):
        spec_of(tmp_path, "--stream", "landing", "--ordered")
    with pytest.raises(ConfigError, match="is a list file"):
        spec_of(tmp_path, str(tmp_path / "list.txt"))
    with pytest.raises(ConfigError, match="divisor of 86400"):
        spec_of(tmp_path, "in", "--window", "7")
    with pytest.raises(ConfigError, match="RSTREAM_RESULTS=results is inside the watched"):
        spec_of(tmp_path, str(tmp_path), "--name", "all")
    (tmp_path / "results").mkdir()
    with pytest.raises(ConfigError, match="RSTREAM_RESULTS=results is inside the watched"):
        spec_of(tmp_path, "results/")
    assert spec_of(tmp_path, "in").options.source == "in/", "a sibling folder is fine"


def outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_metrics_listen_on_the_metrics_host_only() -> None:
    WatchMetrics("w", None).report(1.0, 1, 1)  # no port: nothing served, nothing fails
    port = free_port()
    WatchMetrics("w", port)  # RSTREAM_METRICS_HOST's default, 127.0.0.1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert b"rstream_watch_lag_seconds" in response.read()
    address = outside_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    with pytest.raises(OSError):
        socket.create_connection((address, port), timeout=2).close()


def test_metrics_report_lag_objects_and_open_windows() -> None:
    port = free_port()
    metrics = WatchMetrics("w", port)
    metrics.recorded(5)
    metrics.recorded(2)
    metrics.report(12.5, 3, 2)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in ('rstream_watch_objects_total{watch="w"} 7.0',
                 'rstream_watch_lag_seconds{watch="w"} 12.5',
                 'rstream_watch_chunks_waiting{watch="w"} 3.0',
                 'rstream_watch_windows_open{watch="w"} 2.0'):
        assert line in text, text
