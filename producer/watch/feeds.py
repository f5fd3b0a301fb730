"""Where a watcher finds new objects: a folder listed against its seen-record, a folder
listed after a cursor (``--ordered``), or a Redis stream read through a consumer group
(``producer/watch/stream.py``).

Each feed hands new objects to the window recorder (``producer/watch/windows.py``) as
:class:`Item` s. An item carries the change of the feed's own state (its seen-record entry,
the cursor, the stream entry's acknowledgement) that the recorder commits in the same Redis
transaction as the job's input record: an object is recorded and marked seen, or neither.

- :class:`FolderFeed` lists the whole folder each pass and merges the listing, in key order,
  with the seen-record (a sorted set of ``key NUL etag`` in the same order): a key not in it,
  or with another ETag, is new; a key in it but no longer listed was deleted and is
  forgotten. So the record holds what the folder holds, and memory holds one page of each.
- :class:`OrderedFeed` lists only after the last key recorded (S3 ``StartAfter``): for
  folders whose new keys always sort after the old ones; rewrites are not seen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import redis

from rstream.producer.watch.lock import Stage
from rstream.producer.watch.record import WatchRecord
from rstream.shared.errors import PermanentError
from rstream.shared.storage import Storage
from rstream.shared.uris import can_travel

logger = logging.getLogger(__name__)

PAGE = 1000  # seen-record members read per call


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
            if not can_travel(uri):  # too long even to carry; a refused one gets its line
                logger.warning("watch %s: skipping %r: too long for a chunk message",
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
            if not can_travel(info.key):
                logger.warning("watch %s: skipping %r: too long for a chunk message",
                               self.record.name, info.key[:200])
                continue
            recorder.add(Item(info.key, info.etag, seen_at,
                              partial(self.record.stage_cursor, uri=info.key)))
        recorder.flush()
