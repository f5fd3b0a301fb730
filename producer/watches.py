"""A watch's record in Redis: its options, the lock its one watcher holds, its open windows,
the chunks it sent that are not scored yet (its lag), and what ``rstream status`` lists.

    rstream:watch:NAME           hash: the options, cursor (--ordered), window_start,
                                 started_at, last_pass_at, lag_s, waiting
    rstream:watch:NAME:lock      the running watcher's token (host, pid); expires LOCK_TTL_S
                                 after its last renewal
    rstream:watch:NAME:windows   hash: open window job -> the end of its window (epoch s)
    rstream:watch:NAME:pending   hash: "job:chunk" -> when its first object was seen; a
                                 chunk leaves it once it is scored
    rstream:watch:NAME:seen      sorted set: the seen-record (producer/feeds.py)
    rstream:watches              set: the names of every watch with a record

Everything a watcher changes while it records objects goes through :meth:`WatchRecord.commit`:
one Redis transaction that runs only while this watcher still holds the lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, cast

import redis

from shared.constants import (
    WATCH_KEY,
    WATCH_LOCK_KEY,
    WATCH_PENDING_KEY,
    WATCH_SEEN_KEY,
    WATCH_WINDOWS_KEY,
    WATCHES_KEY,
)
from shared.errors import ConfigError, NotFoundError, WatchLockLost
from shared.jobs import CANCELLED, JobStore

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LOCK_TTL_S = 10
RENEW_S = 2.0

Stage = Callable[[redis.client.Pipeline], object]

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def check_name(name: str) -> str:
    """``name`` when it is a valid watch (or stream) name, matched whole; else ConfigError."""
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"watch name {name!r} is invalid: use letters, digits, '.', '_' or "
                          "'-' (at most 64, starting with a letter or digit)")
    return name


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
    """The record of watch ``name``; the lock methods are for its one watcher."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.redis, self.name = client, check_name(name)
        self.key = WATCH_KEY.format(name=name)
        self.lock_key = WATCH_LOCK_KEY.format(name=name)
        self.windows_key = WATCH_WINDOWS_KEY.format(name=name)
        self.pending_key = WATCH_PENDING_KEY.format(name=name)
        self.seen_key = WATCH_SEEN_KEY.format(name=name)
        self.token = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "at": round(time.time(), 3)})
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    # The lock: one watcher per name.

    def acquire(self, wait_s: float = LOCK_TTL_S + 2.0, poll_s: float = 0.2) -> None:
        """Take the lock. A holder on this host whose process is gone (a watcher killed and
        started again) is replaced at once; another holder has ``wait_s`` to let it expire,
        else ConfigError: another watcher runs this watch."""
        deadline = time.monotonic() + wait_s
        while not self.redis.set(self.lock_key, self.token, nx=True, ex=LOCK_TTL_S):
            holder = self.redis.get(self.lock_key)
            if holder is not None and _dead_here(holder):
                self._release([self.lock_key], [holder])
                continue
            if time.monotonic() > deadline:
                raise ConfigError(f"watch {self.name} is already running ({_who(holder)}): "
                                  "stop that watcher first, or give this one another --name")
            time.sleep(poll_s)

    def renew(self) -> bool:
        """Extend the lock; False when another watcher holds it now."""
        if self._renew([self.lock_key], [self.token, LOCK_TTL_S]):
            return True
        # Expired while Redis was away (or restarted): take it again if nobody else did.
        return bool(self.redis.set(self.lock_key, self.token, nx=True, ex=LOCK_TTL_S))

    def release(self) -> None:
        self._release([self.lock_key], [self.token])

    def commit(self, stage: Stage) -> None:
        """Run ``stage``'s commands in one transaction, while this watcher holds the lock;
        WatchLockLost when another watcher holds it."""
        while True:
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.lock_key)
                    # Watching: the pipeline answers at once, before MULTI.
                    holder = cast(bytes | None, pipe.get(self.lock_key))
                    if holder != self.token.encode():
                        pipe.unwatch()
                        if holder is None and self.renew():
                            continue
                        raise WatchLockLost(f"watch {self.name}: another watcher holds the "
                                            f"lock now ({_who(holder)}): this one stops")
                    pipe.multi()
                    stage(pipe)
                    pipe.execute()
                    return
                except redis.WatchError:  # the lock was renewed meanwhile: try again
                    continue

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
        holder = self.redis.get(self.lock_key)
        windows = []
        for job, end in sorted(self.open_windows().items()):
            try:
                record = jobs.get(job)
            except NotFoundError:
                continue
            windows.append({"job": job, "until": _utc(end), "images": record.listed_images,
                            "processed": record.processed, "failed": record.failed,
                            "status": record.status})
        return {"watch": self.name, "running": holder is not None,
                "watcher": _who(holder) if holder else None, **raw,
                "seen_record": int(self.redis.zcard(self.seen_key)), "windows": windows}

    def _hash(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.key).items()}


def all_watches(client: redis.Redis, jobs: JobStore) -> list[dict[str, Any]]:
    """Every watch with a record, by name, described."""
    names = sorted(n.decode() for n in client.smembers(WATCHES_KEY))
    return [WatchRecord(client, name).describe(jobs) for name in names]


class Heartbeat:
    """Renews a watcher's lock every RENEW_S seconds in a daemon thread; ``lost`` is set when
    another watcher holds it (the next commit stops this one)."""

    def __init__(self, record: WatchRecord) -> None:
        self.record = record
        self.lost = threading.Event()
        self._stopped = threading.Event()

    def start(self) -> Heartbeat:
        threading.Thread(target=self._run, name="rstream-watch-lock", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(RENEW_S):
            try:
                if not self.record.renew():
                    self.lost.set()
            except redis.RedisError as exc:  # Redis away: the commits will say if it matters
                logger.debug("watch %s: lock not renewed: %s", self.record.name, exc)


def _dead_here(holder: bytes) -> bool:
    """Whether the lock's holder ran on this host in a process that no longer exists."""
    try:
        token = json.loads(holder)
        host, pid = token["host"], int(token["pid"])
    except (ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _who(holder: bytes | None) -> str:
    try:
        token = json.loads(holder or b"")
        return f"pid {token['pid']} on {token['host']}"
    except (ValueError, KeyError, TypeError):
        return "unknown holder"


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _changed(old: WatchOptions, new: WatchOptions) -> str:
    return ", ".join(f"{f.name} {getattr(old, f.name)!r} -> {getattr(new, f.name)!r}"
                     for f in fields(WatchOptions) if getattr(old, f.name) != getattr(new, f.name))
