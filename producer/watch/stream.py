"""The ingest stream: URIs that any client adds to ``rstream:ingest:NAME`` with ``XADD``,
read by a watcher through the consumer group ``rstream``.

An entry is acknowledged, and deleted from the stream, in the transaction that records it
(``producer/watch/windows.py``), or that skips it as a duplicate or refuses it: a watcher killed
between reading entries and recording them reads them again at its next start (they are
still pending for its consumer), and nothing is sent twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import redis

from rstream.producer.watch.feeds import Item, Recorder, member
from rstream.producer.watch.record import WatchRecord
from rstream.shared.constants import INGEST_GROUP, INGEST_STREAM_KEY
from rstream.shared.errors import PermanentError
from rstream.shared.queue import deadletters
from rstream.shared.storage import Storage
from rstream.shared.uris import uri_problem

logger = logging.getLogger(__name__)

SEEN_MAX = 1_000_000  # a stream watch remembers at most this many (uri, etag)
STAT_THREADS = 8  # ETags of stream entries that bring none are fetched in parallel
CONSUMER = "watcher"  # one watcher per name (the lock), so one consumer in the group


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
    problem = uri_problem(uri)
    if problem:
        return "", None, f"uri {uri[:80]!r} is not a URI: {problem}"
    return uri, etag, ""


def _added_at(entry_id: bytes) -> float:
    """When a stream entry was added: its id's milliseconds."""
    return int(entry_id.split(b"-", 1)[0]) / 1000.0
