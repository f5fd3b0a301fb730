"""Watch mode: a long-running producer that scores every new object exactly once.

``rstream watch SOURCE`` lists a folder (or ``s3://bucket/prefix/``) every ``--interval``
seconds; ``rstream watch --stream NAME`` reads the Redis stream ``rstream:ingest:NAME``. What
is new (a URI with an ETag not seen before) is recorded into the window job of the moment
(``producer/watch/windows.py``) and sent to the workers like any chunk. The watch's state (lock,
options, cursor, seen-record, open windows, pending chunks) lives in Redis
(``producer/watch/record.py``), so a watcher killed at any point and started again loses nothing
and sends nothing twice.

A pass that fails on Redis or storage is logged and tried again (after an error, the next
step first sends what was recorded and not sent); another watcher taking the lock stops
this one (WatchLockLost). SIGTERM or SIGINT stop it after the current step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from rstream.producer.client import Client
from rstream.producer.watch.feeds import Feed, FolderFeed, OrderedFeed
from rstream.producer.watch.lock import LockRenewer
from rstream.producer.watch.metrics import WatchMetrics
from rstream.producer.watch.record import WatchOptions, WatchRecord
from rstream.producer.watch.stream import StreamFeed
from rstream.producer.watch.windows import Stopped, Windows
from rstream.shared.errors import RstreamError, WatchLockLost
from rstream.shared.loop import Loop

logger = logging.getLogger(__name__)

REPORT_EVERY_S = 1.0  # how often the lag is measured while the watcher runs
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class WatchSpec:
    """One watch: its name, what it keeps across restarts, and how this run behaves."""

    name: str
    options: WatchOptions
    interval_s: float = 10.0
    metrics_port: int | None = None

    @property
    def stream(self) -> str | None:
        source = self.options.source
        return source[len("stream:"):] if source.startswith("stream:") else None


class Watcher:
    """Runs one watch until ``stop`` is set; :meth:`run` is the whole life of a watcher."""

    def __init__(self, client: Client, spec: WatchSpec, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.client, self.spec, self.clock = client, spec, clock
        self.stop = stop or threading.Event()
        self.record = WatchRecord(client.jobs.redis, spec.name)
        self.metrics = WatchMetrics(spec.name, spec.metrics_port,
                                    client.settings.metrics_host)
        self.windows = Windows(client, self.record, spec.options,
                               limit=client.settings.max_pending_chunks, stop=self.stop,
                               metrics=self.metrics, clock=clock)
        self.feed = self._feed()
        self.renewer = LockRenewer(self.record.lock)
        self._failed = False

    def _feed(self) -> Feed:
        storage, options = self.client.storage, self.spec.options
        if self.spec.stream is not None:
            return StreamFeed(storage, self.spec.stream, self.record,
                              block_s=min(self.spec.interval_s, 2.0),
                              retention_s=self.client.settings.job_ttl, clock=self.clock)
        kind = OrderedFeed if options.ordered else FolderFeed
        return kind(storage, options.source, self.record, clock=self.clock)

    def run(self) -> None:
        """Open the watch, then pass after pass until told to stop; close it."""
        try:
            self.open()
            LagReport(self).start()
            failures = 0
            while not self.stop.is_set():
                failures = 0 if self.step() else failures + 1
                if failures:
                    delay = min(MAX_BACKOFF_S, self.spec.interval_s * 2 ** min(failures, 5))
                elif self.spec.stream is None:
                    delay = self.spec.interval_s
                else:
                    delay = 0.0  # a stream pass waits for entries by itself
                self.stop.wait(delay)
        except Stopped:
            pass
        finally:
            self.stop.set()  # the lag thread too
            self.close()

    def open(self) -> None:
        """Take the watch's lock, send what an earlier watcher recorded and did not send,
        close the windows that ended, and check the options against the watch's record."""
        self.record.lock.acquire()
        self.renewer = LockRenewer(self.record.lock).start()
        try:
            self.windows.recover()
            self.record.adopt(self.spec.options)
            self.feed.setup()
        except BaseException:
            self.close()
            raise
        logger.info("watch %s: watching %s (%s), windows of %d s, model %s", self.spec.name,
                    self.spec.options.source, self.spec.options.mode,
                    self.spec.options.window_s, self.spec.options.model)

    def step(self) -> bool:
        """One pass: close the windows that ended, record and send what is new, measure the
        lag. False when it failed on Redis or storage (logged; the next step first sends
        what this one recorded and did not send)."""
        if self.renewer.lost.is_set():
            raise WatchLockLost(f"watch {self.spec.name}: another watcher holds the lock: "
                                "this one stops")
        try:
            if self._failed:
                self.windows.recover()
            self.windows.close_ended()
            self.feed.run_pass(self.windows)
            self.record.note_pass(self.clock())
            self.report()
        except (redis.ConnectionError, redis.TimeoutError, RstreamError) as exc:
            if isinstance(exc, WatchLockLost):
                raise
            logger.warning("watch %s: pass failed (%s: %s); trying again", self.spec.name,
                           type(exc).__name__, exc)
            self.windows.buffer.clear()  # found again by the next pass
            self.windows.skipped.clear()
            self._failed = True
            return False
        self._failed = False
        return True

    def close(self) -> None:
        """Stop renewing the lock and give it up; open windows stay open for the next start."""
        self.renewer.stop()
        try:
            self.record.lock.release()
        except redis.RedisError:  # it expires by itself
            pass
        logger.info("watch %s: stopped", self.spec.name)

    def report(self) -> None:
        """Measure the lag and count the open windows: for the metrics and ``rstream
        status``. After each pass, and every REPORT_EVERY_S in :meth:`run` (in a thread:
        also while a pass waits for room in the queue, when the lag matters most)."""
        lag_s, waiting = self.record.lag(self.client.jobs, self.clock())
        windows = len(self.record.open_windows())
        self.metrics.report(lag_s, waiting, windows)
        self.record.note_lag(lag_s, waiting)


class LagReport(Loop):
    """:meth:`Watcher.report` every REPORT_EVERY_S seconds, until the watcher stops."""

    def __init__(self, watcher: Watcher) -> None:
        super().__init__("rstream-watch-lag", REPORT_EVERY_S, stop=watcher.stop)
        self.watcher = watcher

    def tick(self) -> None:
        try:
            self.watcher.report()
        except redis.RedisError as exc:
            logger.debug("watch %s: lag not measured: %s", self.watcher.spec.name, exc)
