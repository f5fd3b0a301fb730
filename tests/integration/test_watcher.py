"""Watch mode, one pass at a time: a real Redis, local storage, no worker; the clock is the
test's. What is checked is what a watcher leaves behind: window jobs, their input records,
the chunks in the queue, the watch's state. The whole pipeline with worker and watcher
processes killed on the way is in test_watch_pipeline.py."""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rstream.producer.cli.watch import print_watches
from rstream.producer.client import Client
from rstream.producer.monitor import notes
from rstream.producer.submit import resume
from rstream.producer.watch.feeds import FolderFeed, member
from rstream.producer.watch.record import WatchOptions, WatchRecord
from rstream.producer.watch.watcher import Watcher, WatchSpec
from rstream.shared.constants import INFER_QUEUE, INGEST_STREAM_KEY
from rstream.shared.errors import ConfigError, WatchLockLost
from rstream.shared.jobs.inputs import InputRecord
from rstream.shared.jobs.store import RUNNING
from rstream.shared.queue import deadletters
from rstream.shared.queue.inspect import queue_keys
from tests.services import RedisServer, ServiceUnavailable, service_unavailable
from tests.settings import make_settings

T0 = 1_800_000_000  # a window boundary for windows of 60 s (2027-01-15 08:00 UTC)
MODEL = "random:resnet18:classes=3"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    try:
        server = RedisServer().start()
    except ServiceUnavailable as exc:
        service_unavailable(str(exc))
    yield server.url
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(redis_url: str, tmp_path: Path) -> Client:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    client = Client(make_settings(redis_url=redis_url, storage_root=str(root), chunk_size=2,
                                  max_pending_chunks=0))
    client.jobs.redis.flushdb()
    return client


def watcher(client: Client, clock: Clock, *, source: str = "in/", ordered: bool = False,
            model: str = MODEL, name: str = "w") -> Watcher:
    options = WatchOptions(source=source, model=model, window_s=60, ordered=ordered,
                           chunk_size=2, results="results")
    return Watcher(client, WatchSpec(name, options, interval_s=0.1), clock=clock)


def put(client: Client, *names: str, data: bytes = b"image") -> None:
    for name in names:
        client.storage.write(f"in/{name}", data + name.encode())


def opened(client: Client, *names: str, **options: Any) -> tuple[Clock, Watcher]:
    """A watcher (``watcher``'s options) opened on a clock, and ``names`` landed in ``in/``."""
    clock = Clock()
    w = watcher(client, clock, **options)
    w.open()
    put(client, *names)
    return clock, w


def queued_chunks(client: Client) -> Counter[str]:
    """Task ids of the chunk messages in the infer queue, with how often each is there."""
    found: Counter[str] = Counter()
    for key in queue_keys(INFER_QUEUE):
        for raw in client.jobs.redis.lrange(key, 0, -1):
            found[json.loads(raw)["headers"]["id"]] += 1
    return found


def recorded(client: Client, job: str) -> list[dict[str, Any]]:
    """Every line of the window job's input record, in chunk order."""
    record = InputRecord(client.storage, "results", job)
    lines = []
    for first in record.segments():
        lines += [json.loads(raw) for raw in
                  client.storage.read(record.segment_uri(first)).splitlines()]
    return lines


def test_objects_go_into_the_window_of_the_moment_and_a_window_closes_when_it_is_over(
        client: Client) -> None:
    clock, w = opened(client, "a.jpg", "b.jpg", "c.jpg")
    clock.now += 10
    assert w.step()
    first = "watch-w-202701150800"
    job = client.jobs.get(first)
    assert (job.watch, job.listed_images, job.listed_chunks, job.chunks) == ("w", 3, 2, 2)
    assert job.submitting and not job.listing_done, "open: more may come"
    lines = recorded(client, first)
    assert [line["uris"] for line in lines] == [["in/a.jpg", "in/b.jpg"], ["in/c.jpg"]]
    assert all(len(line["etags"]) == len(line["uris"]) for line in lines)
    assert queued_chunks(client) == Counter({f"{first}:0:0": 1, f"{first}:1:0": 1})

    clock.now += 60  # the next window
    put(client, "d.jpg")
    assert w.step()
    closed = client.jobs.get(first)
    assert closed.listing_done and not closed.submitting, "closed: end_submit was called"
    assert closed.status == RUNNING, "its chunks are not scored yet (no worker here)"
    second = client.jobs.get("watch-w-202701150801")
    assert second.listed_images == 1 and [line["uris"] for line in recorded(
        client, second.id)] == [["in/d.jpg"]]
    assert WatchRecord(client.jobs.redis, "w").open_windows() == {second.id: T0 + 120}
    assert w.step() and client.jobs.get(second.id).listed_images == 1, "nothing new"
    w.close()


def test_a_window_that_ends_while_no_watcher_runs_is_closed_by_the_next_one(
        client: Client) -> None:
    clock, w = opened(client, "a.jpg")
    assert w.step()
    w.close()
    clock.now += 600
    again = watcher(client, clock)
    again.open()
    job = client.jobs.get("watch-w-202701150800")
    assert job.listing_done and not job.submitting
    assert WatchRecord(client.jobs.redis, "w").open_windows() == {}
    again.close()


class Crash(Exception):
    """Stands for a SIGKILL at a chosen instant (the process tests kill for real)."""


def test_chunks_recorded_but_not_sent_when_the_watcher_died_are_sent_by_the_next_one(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    clock, w = opened(client, "a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg")
    sent: list[str] = []
    real_send = client.sender.publish

    def send_once(message: Any) -> None:
        if sent:
            raise Crash  # dies after the first chunk message went out
        sent.append(message.task_id)
        real_send(message)

    monkeypatch.setattr(client.sender, "publish", send_once)
    with pytest.raises(Crash):
        w.step()
    monkeypatch.setattr(client.sender, "publish", real_send)
    job = "watch-w-202701150800"
    assert client.jobs.get(job).listed_chunks == 2, "two segments of one chunk recorded"
    assert queued_chunks(client) == Counter({f"{job}:0:0": 1})
    # Chunk 1 is marked sent, but its message never left: "lost", as on a kill after
    # mark_sent. Recorded chunks that were never marked are "not sent".
    w.renewer.stop()
    w.record.lock.release()

    again = watcher(client, clock)
    again.open()
    assert again.step()
    record = client.jobs.get(job)
    assert record.listed_images == 5 and record.listed_chunks == 3
    assert queued_chunks(client) == Counter({f"{job}:{c}:0": 1 for c in range(3)}), \
        "every chunk queued once: nothing lost, nothing twice"
    uris = [u for line in recorded(client, job) for u in line["uris"]]
    assert sorted(uris) == [f"in/{n}.jpg" for n in "abcde"]
    again.close()


def test_an_unsent_recorded_chunk_is_sent_before_its_window_closes(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    clock, w = opened(client, "a.jpg")
    # Dies after the record, before the chunk is even marked sent.
    monkeypatch.setattr(client.sender, "wait_for_room",
                        lambda *args: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        w.step()
    monkeypatch.undo()
    clock.now += 60
    assert w.step()
    job = client.jobs.get("watch-w-202701150800")
    assert job.listing_done and job.chunks == 1 and job.outstanding == 1
    assert queued_chunks(client) == Counter({"watch-w-202701150800:0:0": 1})
    w.close()


def test_rewritten_objects_are_new_deleted_ones_are_forgotten_unchanged_ones_never_sent(
        client: Client) -> None:
    _, w = opened(client, "a.jpg", "b.jpg", "c.jpg")
    assert w.step()
    record = WatchRecord(client.jobs.redis, "w")
    assert client.jobs.redis.zcard(record.seen_key) == 3
    put(client, "a.jpg", data=b"rewritten, longer")
    client.storage.delete("in/b.jpg")
    assert w.step()
    assert w.step()
    lines = recorded(client, "watch-w-202701150800")
    uris = [u for line in lines for u in line["uris"]]
    assert Counter(uris) == Counter({"in/a.jpg": 2, "in/b.jpg": 1, "in/c.jpg": 1})
    etags = [e for line in lines for u, e in zip(line["uris"], line["etags"], strict=True)
             if u == "in/a.jpg"]
    assert etags[0] != etags[1], "scored again under its new ETag"
    members = sorted(m.decode().split("\x00")[0] for m in
                     client.jobs.redis.zrange(record.seen_key, 0, -1))
    assert members == ["a.jpg", "c.jpg"], "the deleted key left the seen-record"
    put(client, "b.jpg")  # written again after its deletion: a new object
    assert w.step()
    assert [u for line in recorded(client, "watch-w-202701150800") for u in line["uris"]
            ].count("in/b.jpg") == 2
    w.close()


def test_the_seen_record_is_read_a_page_at_a_time_in_key_order(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rstream.producer.watch.feeds.PAGE", 3)
    clock = Clock()
    w = watcher(client, clock)
    w.open()
    names = ["a-1.jpg", "a/b.jpg", "a/c/d.jpg", "a0.jpg", "b.jpg", "ä.jpg", "z.jpg", "zz.jpg"]
    put(client, *names)
    assert w.step()
    put(client, "a/c/d.jpg", data=b"new version")
    client.storage.delete("in/b.jpg")
    assert w.step()
    assert w.step()
    uris = Counter(u for line in recorded(client, "watch-w-202701150800")
                   for u in line["uris"])
    assert uris == Counter({f"in/{n}": 1 for n in names} | {"in/a/c/d.jpg": 2})


def test_a_member_rewritten_between_two_pages_is_not_read_again(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # The recorder may commit a rewrite (old member out, new one in) for the last key of a
    # page before the next page is read; that page must start after the key, not after the
    # old member, or the new member would be read as another, unlisted key (and forgotten).
    monkeypatch.setattr("rstream.producer.watch.feeds.PAGE", 2)
    record = WatchRecord(client.jobs.redis, "w")
    feed = FolderFeed(client.storage, "in/", record)
    client.jobs.redis.zadd(record.seen_key, {member(k, "etag-1"): 0 for k in "abcde"})
    seen = feed._seen()
    first_page = [next(seen), next(seen)]
    client.jobs.redis.zrem(record.seen_key, member("b", "etag-1"))
    client.jobs.redis.zadd(record.seen_key, {member("b", "etag-2"): 0})
    assert [*first_page, *seen] == [(k, "etag-1") for k in "abcde"]


def test_an_ordered_watch_lists_after_its_cursor_only(client: Client) -> None:
    _, w = opened(client, "0001.jpg", "0002.jpg", ordered=True)
    assert w.step()
    assert w.record.cursor() == "in/0002.jpg"
    put(client, "0003.jpg")
    put(client, "0001.jpg", data=b"rewritten")  # before the cursor: not seen, as documented
    assert w.step()
    uris = [u for line in recorded(client, "watch-w-202701150800") for u in line["uris"]]
    assert uris == ["in/0001.jpg", "in/0002.jpg", "in/0003.jpg"]
    assert client.jobs.redis.zcard(w.record.seen_key) == 0, "no seen-record in this mode"
    w.close()


def test_one_watcher_per_name(client: Client) -> None:
    clock = Clock()
    first = watcher(client, clock)
    first.open()
    second = WatchRecord(client.jobs.redis, "w").lock
    with pytest.raises(ConfigError, match=r"watch w is already running \(pid \d+ on "):
        second.acquire(wait_s=0.3)
    first.close()
    second.acquire(wait_s=0.3)
    second.release()


def test_a_lock_left_by_a_dead_watcher_on_this_host_is_taken_at_once(client: Client) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock = WatchRecord(client.jobs.redis, "w").lock
    dead = json.loads(lock.token) | {"pid": gone.pid}
    client.jobs.redis.set(lock.key, json.dumps(dead), ex=60)
    lock.acquire(wait_s=0.0)
    assert client.jobs.redis.get(lock.key) == lock.token.encode()


def test_a_watcher_that_lost_its_lock_records_nothing(client: Client) -> None:
    w = watcher(client, Clock())
    w.open()
    client.jobs.redis.set(w.record.lock.key, "someone else")
    put(client, "a.jpg")
    with pytest.raises(WatchLockLost, match="another watcher holds the lock"):
        w.step()
    w.renewer.stop()
    assert not client.jobs.exists("watch-w-202701150800") or \
        client.jobs.get("watch-w-202701150800").listed_images == 0


def test_a_restart_watches_the_same_source_the_same_way(client: Client) -> None:
    clock, w = opened(client, "a.jpg")
    assert w.step()
    w.close()
    client.storage.write("other/x.jpg", b"x")
    with pytest.raises(ConfigError, match=r"watches in/ \(seen-record\), not other/"):
        watcher(client, clock, source="other/").open()
    with pytest.raises(ConfigError, match=r"open windows .*\(model "):
        watcher(client, clock, model="random:resnet18:classes=5").open()
    clock.now += 60  # once the window is over, another model may take over
    w = watcher(client, clock, model="random:resnet18:classes=5")
    w.open()
    w.close()


def test_open_windows_refuse_resume_and_closed_ones_resume_from_their_record(
        client: Client) -> None:
    clock, w = opened(client, "a.jpg", "b.jpg", "c.jpg")
    assert w.step()
    job = "watch-w-202701150800"
    with pytest.raises(ConfigError, match="open window of watch w"):
        resume(job, client=client)
    clock.now += 60
    assert w.step()
    sent = resume(job, client=client)
    assert sent.chunks == 2 and client.jobs.get(job).listed_images == 3, \
        "the two unscored chunks again, from the record; nothing listed anew"
    w.close()


def test_status_lists_the_watches_their_lag_and_open_windows(
        client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    clock, w = opened(client, "a.jpg", "b.jpg", "c.jpg")
    clock.now += 5
    assert w.step()
    clock.now += 20
    assert w.step()
    print_watches(client, as_json=False)
    out = capsys.readouterr().out
    assert "watch w: running (pid " in out and "in/ (seen-record)" in out, out
    assert "lag 20.0 s (2 chunk(s) waiting)" in out, out
    assert "window watch-w-202701150800 open until 2027-01-15 08:01:00 UTC: 0/3 images" in out
    lines = notes(client.jobs, client.jobs.get("watch-w-202701150800"),
                  client.settings.visibility_timeout)
    assert lines == ["an open window of watch w, until 08:01:00 UTC: 3 images recorded so far",
                     "waiting: no worker is running (none has sent a heartbeat to rstream in "
                     "10 s): start one with `rstream worker`"], lines
    print_watches(client, as_json=True)
    watches = json.loads(capsys.readouterr().out)
    assert watches[0]["watch"] == "w" and watches[0]["seen_record"] == 3
    w.close()
    print_watches(client, as_json=False)
    assert "watch w: stopped" in capsys.readouterr().out


def xadd(client: Client, stream: str, **fields: str) -> bytes:
    return bytes(client.jobs.redis.xadd(INGEST_STREAM_KEY.format(name=stream), fields))


def test_a_stream_entry_is_recorded_once_then_acknowledged_and_deleted(
        client: Client) -> None:
    _, w = opened(client, "a.jpg", "b.jpg", source="stream:ingest", name="s")
    key = INGEST_STREAM_KEY.format(name="ingest")
    xadd(client, "ingest", uri="in/a.jpg")
    xadd(client, "ingest", uri="in/b.jpg")
    xadd(client, "ingest", uri="in/a.jpg")  # announced twice: one line
    xadd(client, "ingest", uri="in/missing.jpg")  # its worker writes a "not found" line
    xadd(client, "ingest", path="in/a.jpg")  # no uri field
    xadd(client, "ingest", uri="in/x\n.jpg")  # not a URI a chunk can carry
    assert w.step()
    job = "watch-s-202701150800"
    uris = [u for line in recorded(client, job) for u in line["uris"]]
    assert uris == ["in/a.jpg", "in/b.jpg", "in/missing.jpg"]
    etags = [e for line in recorded(client, job) for e in line["etags"]]
    assert etags[0] and etags[1] and etags[2] == "", "stat gave the ETags; missing: none"
    r = client.jobs.redis
    assert r.xlen(key) == 0, "every entry acknowledged and deleted"
    assert r.xpending(key, "rstream")["pending"] == 0
    refused = deadletters.recent(r, 10)
    assert sorted(e["queue"] for e in refused) == ["ingest:ingest", "ingest:ingest"]
    assert any("no uri field" in e["reason"] for e in refused)

    xadd(client, "ingest", uri="in/a.jpg")  # the same version again: a duplicate
    assert w.step()
    assert client.jobs.get(job).listed_images == 3
    put(client, "a.jpg", data=b"a new version")
    xadd(client, "ingest", uri="in/a.jpg")
    xadd(client, "ingest", uri="in/b.jpg", etag="given-by-the-client")
    assert w.step()
    assert [u for line in recorded(client, job) for u in line["uris"]][3:] == [
        "in/a.jpg", "in/b.jpg"]
    w.close()


def test_entries_read_but_not_recorded_are_read_again_by_the_next_watcher(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    clock, w = opened(client, "a.jpg", "b.jpg", "c.jpg", source="stream:ingest", name="s")
    for name in ("a", "b", "c"):
        xadd(client, "ingest", uri=f"in/{name}.jpg")

    def crash(*args: object, **kwargs: object) -> None:
        raise Crash

    monkeypatch.setattr(InputRecord, "write_segment", crash)
    with pytest.raises(Crash):
        w.step()
    monkeypatch.undo()
    key = INGEST_STREAM_KEY.format(name="ingest")
    assert client.jobs.redis.xpending(key, "rstream")["pending"] == 3, "read, not recorded"
    w.renewer.stop()
    w.record.lock.release()
    again = watcher(client, clock, source="stream:ingest", name="s")
    again.open()
    assert again.step()
    job = "watch-s-202701150800"
    assert [u for line in recorded(client, job) for u in line["uris"]] == [
        "in/a.jpg", "in/b.jpg", "in/c.jpg"]
    assert client.jobs.redis.xpending(key, "rstream")["pending"] == 0
    assert queued_chunks(client) == Counter({f"{job}:0:0": 1, f"{job}:1:0": 1})
    again.close()


def test_the_watcher_stops_cleanly_when_told(client: Client) -> None:
    w = watcher(client, Clock())
    put(client, "a.jpg")
    thread = threading.Thread(target=w.run)
    thread.start()
    w.stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert client.jobs.redis.get(w.record.lock.key) is None, "the lock is given back"


def test_redis_errors_in_a_pass_are_logged_and_the_next_pass_recovers(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    _, w = opened(client, "a.jpg", "b.jpg", "c.jpg")
    calls = {"n": 0}
    real = client.sender.publish

    def flaky(message: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise redis.ConnectionError("Redis went away")
        real(message)

    monkeypatch.setattr(client.sender, "publish", flaky)
    assert not w.step(), "the pass failed, and said so"
    assert w.step(), "the next one recovered"
    job = "watch-w-202701150800"
    assert queued_chunks(client) == Counter({f"{job}:0:0": 1, f"{job}:1:0": 1})
    w.close()
