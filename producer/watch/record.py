"""A watch's record in Redis: its options, its open windows, the chunks it sent that are not
scored yet (its lag), and what ``rstream status`` lists; the lock its one watcher holds is in
``producer/watch/lock.py``.

    rstream:watch:NAME           hash: the options, cursor (--ordered), window_start,
                                 started_at, last_pass_at, lag_s, waiting
    rstream:watch:NAME:lock      the running watcher's token (host, pid); expires LOCK_TTL_S
                                 after its last renewal
    rstream:watch:NAME:windows   hash: open window job -> the end of its window (epoch s)
    rstream:watch:NAME:pending   hash: "job:chunk" -> when its first object was seen; a
                                 chunk leaves it once it is scored
    rstream:watch:NAME:seen      sorted set: the seen-record (producer/watch/feeds.py)
    rstream:watches              set: the names of every watch with a record

Everything a watcher changes while it records objects goes through :meth:`WatchRecord.commit`:
one Redis transaction that commits only while this watcher still holds the lock.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from typing import Any

import redis

from rstream.producer.watch.lock import Stage, WatchLock
from rstream.shared.constants import (
    WATCH_KEY,
    WATCH_PENDING_KEY,
    WATCH_SEEN_KEY,
    WATCH_WINDOWS_KEY,
    WATCHES_KEY,
)
from rstream.shared.errors import ConfigError, NotFoundError
from rstream.shared.jobs.store import CANCELLED, JobStore
from rstream.shared.names import WATCH_NAME

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class WatchOptions:
    """What a watch was started with; kept in its record and checked at every start."""

    source: str  # a folder location, or "stream:NAME"
    model: str
    window_s: int
    ordered: bool
    chunk_size: int
    results: str

    @property
    def mode(self) -> str:
        if self.source.startswith("stream:"):
            return "stream"
        return "ordered" if self.ordered else "seen-record"

    def as_hash(self) -> dict[str, str]:
        return {k: str(int(v) if isinstance(v, bool) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> WatchOptions:
        return cls(source=raw["source"], model=raw["model"], window_s=int(raw["window_s"]),
                   ordered=raw["ordered"] == "1", chunk_size=int(raw["chunk_size"]),
                   results=raw["results"])


class WatchRecord:
    """The record of watch ``name``; :attr:`lock` is for its one watcher."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.redis, self.name = client, WATCH_NAME.check(name)
        self.key = WATCH_KEY.format(name=name)
        self.windows_key = WATCH_WINDOWS_KEY.format(name=name)
        self.pending_key = WATCH_PENDING_KEY.format(name=name)
        self.seen_key = WATCH_SEEN_KEY.format(name=name)
        self.lock = WatchLock(client, name)

    def commit(self, stage: Stage) -> None:
        """Run ``stage``'s commands in one transaction, while this watcher holds the lock."""
        self.lock.commit(stage)

    # Options and state.

    def options(self) -> WatchOptions | None:
        raw = self._hash()
        return WatchOptions.from_hash(raw) if "source" in raw else None

    def adopt(self, options: WatchOptions) -> None:
        """Start (or restart) the watch with ``options``. A restart must watch the same
        source the same way; other options may change only while no window is open."""
        old = self.options()
        if old is not None and (old.source, old.mode) != (options.source, options.mode):
            raise ConfigError(f"watch {self.name} watches {old.source} ({old.mode}), not "
                              f"{options.source} ({options.mode}): give this one another "
                              "--name")
        fresh = old != options
        if old is not None and fresh:
            open_now = self.open_windows()
            if open_now:
                ends = ", ".join(f"{job} until {_utc(end)}" for job, end in open_now.items())
                raise ConfigError(f"watch {self.name} has open windows ({ends}) made with "
                                  f"other options ({_changed(old, options)}): start it with "
                                  "the same options until they close, or use another --name")
        mapping: dict[str | bytes, str | bytes | int | float] = {"started_at": time.time()}
        mapping.update(options.as_hash())
        if fresh:
            mapping["window_start"] = 0  # windows of another length start afresh
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, mapping=mapping)
            pipe.sadd(WATCHES_KEY, self.name)
            pipe.execute()

    def cursor(self) -> str:
        """The last key an --ordered watch recorded ("" before the first)."""
        return self._hash().get("cursor", "")

    def stage_cursor(self, pipe: redis.client.Pipeline, uri: str) -> None:
        pipe.hset(self.key, "cursor", uri)

    def window_start(self) -> int:
        """The start of the newest window opened (windows never go back in time)."""
        return int(float(self._hash().get("window_start", "0")))

    def open_windows(self) -> dict[str, float]:
        """Open window job -> the end of its window."""
        return {k.decode(): float(v) for k, v in self.redis.hgetall(self.windows_key).items()}

    def open_window(self, job: str, start: int, end: int) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.windows_key, job, end)
            pipe.hset(self.key, "window_start", start)
            pipe.execute()

    def window_closed(self, job: str) -> None:
        self.redis.hdel(self.windows_key, job)

    def stage_pending(self, pipe: redis.client.Pipeline, job: str, chunk: int,
                      seen_at: float) -> None:
        """Queue: chunk ``chunk`` of ``job`` waits to be scored since ``seen_at``."""
        pipe.hset(self.pending_key, f"{job}:{chunk}", seen_at)

    def lag(self, jobs: JobStore, now: float) -> tuple[float, int]:
        """(age in seconds of the oldest object sent but not scored yet, 0 when none; how many
        chunks wait). Chunks scored since the last call, and chunks of jobs cancelled or
        gone, are forgotten here, so the pending hash holds only what waits."""
        by_job: dict[str, list[tuple[int, float, bytes]]] = defaultdict(list)
        for field, seen in self.redis.hgetall(self.pending_key).items():
            job, _, chunk = field.decode().rpartition(":")
            by_job[job].append((int(chunk), float(seen), field))
        settled: list[bytes] = []
        oldest, waiting = now, 0
        for job, chunks in by_job.items():
            try:
                cancelled = jobs.get(job).status == CANCELLED
            except NotFoundError:
                cancelled = True
            done = set() if cancelled else jobs.done_chunks(job, [c for c, _, _ in chunks], 0)
            for chunk, seen, field in chunks:
                if cancelled or chunk in done:
                    settled.append(field)
                else:
                    oldest, waiting = min(oldest, seen), waiting + 1
        if settled:
            self.redis.hdel(self.pending_key, *settled)
        return max(0.0, now - oldest), waiting

    def note_pass(self, now: float) -> None:
        self.redis.hset(self.key, "last_pass_at", now)

    def note_lag(self, lag_s: float, waiting: int) -> None:
        self.redis.hset(self.key, mapping={"lag_s": round(lag_s, 3), "waiting": waiting})

    def describe(self, jobs: JobStore) -> dict[str, Any]:
        """What ``rstream status`` shows: options, whether a watcher runs it, its open
        windows with their counts, the size of the seen-record, the lag last measured."""
        raw = self._hash()
        holder = self.lock.holder()
        windows = []
        for job, end in sorted(self.open_windows().items()):
            try:
                record = jobs.get(job)
            except NotFoundError:
                continue
            windows.append({"job": job, "until": _utc(end), "images": record.listed_images,
                            "processed": record.processed, "failed": record.failed,
                            "status": record.status})
        options = self.options()
        return {"watch": self.name, "running": holder is not None, "watcher": holder, **raw,
                "mode": options.mode if options else None,
                "seen_record": int(self.redis.zcard(self.seen_key)), "windows": windows}

    def _hash(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.key).items()}


def all_watches(client: redis.Redis, jobs: JobStore) -> list[dict[str, Any]]:
    """Every watch with a record, by name, described."""
    names = sorted(n.decode() for n in client.smembers(WATCHES_KEY))
    return [WatchRecord(client, name).describe(jobs) for name in names]


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _changed(old: WatchOptions, new: WatchOptions) -> str:
    return ", ".join(f"{f.name} {getattr(old, f.name)!r} -> {getattr(new, f.name)!r}"
                     for f in fields(WatchOptions) if getattr(old, f.name) != getattr(new, f.name))
