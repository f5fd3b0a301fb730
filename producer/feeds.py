"""Where a watcher finds new objects: a folder listed against its seen-record, a folder
listed after a cursor (``--ordered``), or a Redis stream read through a consumer group.

Each feed hands new objects to the window recorder (``producer/windows.py``) as
:class:`Item` s. An item carries the change of the feed's own state (its seen-record entry,
the cursor, the stream entry's acknowledgement) that the recorder commits in the same Redis
transaction as the job's input record: an object is recorded and marked seen, or neither.

- :class:`FolderFeed` lists the whole folder each pass and merges the listing, in key order,
  with the seen-record (a sorted set of ``key NUL etag`` in the same order): a key not in it,
  or with another ETag, is new; a key in it but no longer listed was deleted and is
  forgotten. So the record holds what the folder holds, and memory holds one page of each.
- :class:`OrderedFeed` lists only after the last key recorded (S3 ``StartAfter``): for
  folders whose new keys always sort after the old ones; rewrites are not seen.
- :class:`StreamFeed` reads ``rstream:ingest:NAME``; an entry is acknowledged (and deleted
  from the stream) in the transaction that records it, or that refuses or skips it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import redis

from producer.watches import Stage, WatchRecord
from shared import deadletters
from shared.constants import INGEST_GROUP, INGEST_STREAM_KEY
from shared.errors import PermanentError
from shared.messages import is_uri
from shared.storage import Storage

logger = logging.getLogger(__name__)

PAGE = 1000  # seen-record members read per call
SEEN_MAX = 1_000_000  # a stream watch remembers at most this many (uri, etag)
STAT_THREADS = 8  # ETags of stream entries that bring none are fetched in parallel
CONSUMER = "watcher"  # one watcher per name (the lock), so one consumer in the group


@dataclass(frozen=True)
class Item:
    """A new object for the recorder, with the feed's state change that goes with it."""

    uri: str
    etag: str
    seen_at: float  # when it was first seen (a stream entry: when it was added)
    stage: Stage


class Recorder(Protocol):
    def add(self, item: Item) -> None: ...

    def skip(self, stage: Stage) -> None: ...

    def flush(self) -> None: ...


class Feed(Protocol):
    def setup(self) -> None: ...

    def run_pass(self, recorder: Recorder) -> None: ...


@dataclass(frozen=True)
class Change:
    """One difference between a listing and the seen-record; ``etag`` None: deleted."""

    key: str
    etag: str | None
    before: str | None  # the ETag in the seen-record, None when the key is new


def diff(listed: Iterable[tuple[str, str]], seen: Iterable[tuple[str, str]]) -> Iterator[Change]:
    """Merge two (key, etag) streams, both in key order: new and rewritten keys of
    ``listed``, and keys of ``seen`` that are not listed. PermanentError when ``listed`` is
    not in order (a merge would then report old objects as new)."""
    seen_it = iter(seen)
    current = next(seen_it, None)
    previous: str | None = None
    for key, etag in listed:
        if previous is not None and key <= previous:
            raise PermanentError(f"the listing is not in key order ({previous!r} came before "
                                 f"{key!r}): this storage cannot be watched")
        previous = key
        while current is not None and current[0] < key:
            yield Change(current[0], None, current[1])
            current = next(seen_it, None)
        if current is not None and current[0] == key:
            if current[1] != etag:
                yield Change(key, etag, current[1])
            current = next(seen_it, None)
        else:
            yield Change(key, etag, None)
    while current is not None:
        yield Change(current[0], None, current[1])
        current = next(seen_it, None)


def member(key: str, etag: str) -> str:
    """A seen-record member: NUL sorts before every character a key may hold next, so
    members sort by key first, as listings do."""
    return f"{key}\x00{etag}"


class FolderFeed:
    """A folder listed whole each pass and merged with the seen-record."""

    def __init__(self, storage: Storage, location: str, record: WatchRecord,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage, self.location, self.record, self.clock = storage, location, record, clock
        self.redis = record.redis

    def setup(self) -> None:
        """Nothing to set up: the seen-record grows with the first pass."""

    def run_pass(self, recorder: Recorder) -> None:
        seen_at = self.clock()
        listed = ((info.key[len(self.location):], info.etag)
                  for info in self.storage.list_info(self.location))
        gone: list[str] = []
        for change in diff(listed, self._seen()):
            if change.etag is None:
                assert change.before is not None
                gone.append(member(change.key, change.before))
                if len(gone) >= PAGE:
                    self._forget(gone)
                continue
            uri = self.location + change.key
            if not is_uri(uri):
                logger.warning("watch %s: skipping %r: not a URI a chunk can carry",
                               self.record.name, uri[:200])
                continue
            old = member(change.key, change.before) if change.before is not None else None
            recorder.add(Item(uri, change.etag, seen_at,
                              partial(self._mark, member(change.key, change.etag), old)))
        self._forget(gone)
        recorder.flush()

    def _seen(self) -> Iterator[tuple[str, str]]:
        """The seen-record in key order, a page at a time. A page starts after the previous
        page's last key (not member), so a member the recorder rewrote meanwhile for that
        key is not read again."""
        start = b"-"
        while True:
            page = self.redis.zrangebylex(self.record.seen_key, start, b"+", start=0, num=PAGE)
            for raw in page:
                key, _, etag = raw.decode().partition("\x00")
                yield key, etag
            if len(page) < PAGE:
                return
            start = b"[" + page[-1].partition(b"\x00")[0] + b"\x01"

    def _mark(self, new: str, old: str | None, pipe: redis.client.Pipeline) -> None:
        if old is not None:
            pipe.zrem(self.record.seen_key, old)
        pipe.zadd(self.record.seen_key, {new: 0})

    def _forget(self, gone: list[str]) -> None:
        """Deleted objects leave the record (written again later, they are new again)."""
        if gone:
            self.redis.zrem(self.record.seen_key, *gone)
            logger.info("watch %s: %d object(s) deleted since the last pass",
                        self.record.name, len(gone))
            gone.clear()


class OrderedFeed:
    """A folder whose new keys sort after every key already there: each pass lists only
    after the last key recorded (S3 ``StartAfter``); the cursor is the only state."""

    def __init__(self, storage: Storage, location: str, record: WatchRecord,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage, self.location, self.record, self.clock = storage, location, record, clock

    def setup(self) -> None:
        """Nothing to set up: the cursor starts empty (the first pass lists everything)."""

    def run_pass(self, recorder: Recorder) -> None:
        seen_at = self.clock()
        previous = self.record.cursor()
        for info in self.storage.list_info(self.location, start_after=previous or None):
            if info.key <= previous:
                raise PermanentError(f"the listing is not in key order ({previous!r} came "
                                     f"before {info.key!r}): this storage cannot be watched")
            previous = info.key
            if not is_uri(info.key):
                logger.warning("watch %s: skipping %r: not a URI a chunk can carry",
                               self.record.name, info.key[:200])
                continue
            recorder.add(Item(info.key, info.etag, seen_at,
                              partial(self.record.stage_cursor, uri=info.key)))
        recorder.flush()


class StreamFeed:
    """URIs that clients add to ``rstream:ingest:NAME`` (``XADD ... uri URI [etag ETAG]``),
    read through the consumer group ``rstream``. An entry without an ETag gets the object's
    current one (a missing object: "", and its worker writes the error line). An entry whose
    (uri, etag) was recorded before, within the retention, is a duplicate: acknowledged, not
    sent. An entry that is not a URI is kept in the dead letters with why."""

    def __init__(self, storage: Storage, stream: str, record: WatchRecord, *,
                 block_s: float, retention_s: float, count: int = 1024,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage, self.record, self.clock = storage, record, clock
        self.redis = record.redis
        self.stream, self.key = stream, INGEST_STREAM_KEY.format(name=stream)
        self.block_ms = max(1, int(block_s * 1000))
        self.retention_s, self.count = retention_s, count

    def setup(self) -> None:
        """The consumer group, from the start of the stream (entries added before the first
        start are scored too); created with the stream when it does not exist."""
        try:
            self.redis.xgroup_create(self.key, INGEST_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run_pass(self, recorder: Recorder) -> None:
        # First what this consumer read before and did not acknowledge (a watcher killed
        # between read and record), then new entries, waiting up to block_ms for some.
        entries = self._read("0", block_ms=None) or self._read(">", block_ms=self.block_ms)
        if entries:
            self._hand_over(entries, recorder)
            recorder.flush()
        self._trim_seen()

    def _read(self, start: str, block_ms: int | None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        try:
            reply = self.redis.xreadgroup(INGEST_GROUP, CONSUMER, {self.key: start},
                                          count=self.count, block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.setup()  # the stream or group was deleted: start again from its beginning
            return []
        return list(reply[0][1]) if reply else []

    def _hand_over(self, entries: list[tuple[bytes, dict[bytes, bytes]]],
                   recorder: Recorder) -> None:
        parsed = [(entry_id, *_parse(fields)) for entry_id, fields in entries]
        unknown = [uri for _, uri, etag, reason in parsed if not reason and etag is None]
        with ThreadPoolExecutor(STAT_THREADS) as pool:
            etags = dict(zip(unknown, pool.map(self._etag, unknown), strict=True))
        found = [(entry_id, uri, etag if etag is not None else etags[uri])
                 for entry_id, uri, etag, reason in parsed if not reason]
        members = [member(uri, etag) for _, uri, etag in found]
        scores = self.redis.zmscore(self.record.seen_key, members) if members else []
        known = {m for m, score in zip(members, scores, strict=True) if score is not None}
        by_id = {entry_id: (uri, etag) for entry_id, uri, etag in found}
        for entry_id, _, _, reason in parsed:
            if reason:
                logger.warning("watch %s: stream entry %s refused: %s", self.record.name,
                               entry_id.decode(), reason)
                recorder.skip(partial(self._refuse, entry_id, reason, entries))
                continue
            uri, etag = by_id[entry_id]
            if member(uri, etag) in known:
                recorder.skip(partial(self._ack, entry_id))
                continue
            known.add(member(uri, etag))
            recorder.add(Item(uri, etag, _added_at(entry_id),
                              partial(self._mark, entry_id, member(uri, etag))))

    def _etag(self, uri: str) -> str:
        try:
            return self.storage.stat(uri).etag
        except PermanentError:  # missing, refused: recorded all the same, to get its error line
            return ""

    def _ack(self, entry_id: bytes, pipe: redis.client.Pipeline) -> None:
        pipe.xack(self.key, INGEST_GROUP, entry_id)
        pipe.xdel(self.key, entry_id)

    def _mark(self, entry_id: bytes, seen: str, pipe: redis.client.Pipeline) -> None:
        self._ack(entry_id, pipe)
        pipe.zadd(self.record.seen_key, {seen: self.clock()})

    def _refuse(self, entry_id: bytes, reason: str,
                entries: list[tuple[bytes, dict[bytes, bytes]]],
                pipe: redis.client.Pipeline) -> None:
        fields = dict(entries).get(entry_id) or {}
        raw = json.dumps({k.decode(errors="replace"): v.decode(errors="replace")
                          for k, v in fields.items()})
        deadletters.stage(pipe, f"stream entry {entry_id.decode()}: {reason}",
                          queue=f"ingest:{self.stream}", headers={"id": entry_id.decode()},
                          raw=raw)
        self._ack(entry_id, pipe)

    def _trim_seen(self) -> None:
        """Forget (uri, etag) pairs older than the retention, and beyond SEEN_MAX."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self.record.seen_key, "-inf", self.clock() - self.retention_s)
            pipe.zremrangebyrank(self.record.seen_key, 0, -(SEEN_MAX + 1))
            pipe.execute()


def _parse(fields: dict[bytes, bytes] | None) -> tuple[str, str | None, str]:
    """(uri, etag or None, "") of a stream entry, or ("", None, why it is refused)."""
    if not fields:
        return "", None, "the entry is empty or was deleted before it was read"
    raw_uri, raw_etag = fields.get(b"uri"), fields.get(b"etag")
    if raw_uri is None:
        return "", None, "no uri field: add entries with XADD KEY * uri URI"
    try:
        uri = raw_uri.decode().strip()
        etag = raw_etag.decode() if raw_etag is not None else None
    except UnicodeDecodeError:
        return "", None, "uri or etag is not UTF-8 text"
    if not is_uri(uri):
        return "", None, f"uri {uri[:80]!r} is not a URI (empty, too long, or a control " \
                         "character in it)"
    return uri, etag, ""


def _added_at(entry_id: bytes) -> float:
    """When a stream entry was added: its id's milliseconds."""
    return int(entry_id.split(b"-", 1)[0]) / 1000.0
