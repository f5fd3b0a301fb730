"""Window jobs: a watcher records what it finds into one ordinary job per window of time
(``watch-NAME-YYYYMMDDHH`` for hourly windows) and sends its chunks; a window closes when it
is over.

Each flush of new objects is recorded in the order a submission records a segment: the
chunks' URIs (and ETags) are written to the window job's input record, then one Redis
transaction notes them in the job record (``listed_chunks``), marks them seen in the feed's
own state (seen-record, cursor or stream acknowledgement) and notes when they were seen (the
lag); only then are the chunks sent. A watcher killed anywhere in between leaves either
nothing recorded (the objects are found again) or a record whose unsent chunks the next
start sends (:meth:`Windows.recover`). A window is closed (its listing marked complete, then
``end_submit``) only after every chunk it recorded was sent, so its job ends when its last
chunk is scored, with its manifest.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from rstream.producer.client import Client
from rstream.producer.watch.feeds import Item
from rstream.producer.watch.lock import Stage
from rstream.producer.watch.metrics import WatchMetrics
from rstream.producer.watch.record import WatchOptions, WatchRecord
from rstream.shared.errors import ConfigError, PermanentError
from rstream.shared.jobs.finish import finish
from rstream.shared.jobs.inputs import InputRecord, segment_size
from rstream.shared.jobs.resend import Unfinished, resend_unfinished
from rstream.shared.jobs.store import Job
from rstream.shared.queue.inspect import held_task_ids

logger = logging.getLogger(__name__)

DAY_S = 86_400


class Stopped(Exception):
    """The watcher was told to stop in the middle of a step; nothing is left half-done."""


def check_window(seconds: int) -> int:
    """``seconds`` when windows of that length tile a day (UTC), else ConfigError."""
    if seconds < 1 or DAY_S % seconds:
        raise ConfigError(f"--window {seconds} does not divide a day into whole windows: use "
                          "a divisor of 86400 such as 60, 300, 900, 3600 or 86400")
    return seconds


def window_start(now: float, window_s: int) -> int:
    """The start (epoch seconds, UTC) of the window that holds ``now``."""
    return int(now // window_s) * window_s


def window_job(name: str, start: int, window_s: int) -> str:
    """The job id of the window that starts at ``start``: to the hour for windows of whole
    hours, else to the minute, else to the second."""
    pattern = ("%Y%m%d%H" if window_s % 3600 == 0 else
               "%Y%m%d%H%M" if window_s % 60 == 0 else "%Y%m%d%H%M%S")
    return f"watch-{name}-{datetime.fromtimestamp(start, UTC).strftime(pattern)}"


class Windows:
    """Records a watcher's new objects into window jobs, sends their chunks, closes windows.

    The feeds call :meth:`add` for each new object, :meth:`skip` for state to commit without
    an object (a duplicate or refused stream entry), and :meth:`flush` at the end of a pass.
    """

    def __init__(self, client: Client, record: WatchRecord, options: WatchOptions, *,
                 limit: int, stop: threading.Event, metrics: WatchMetrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.client, self.jobs, self.record = client, client.jobs, record
        self.options, self.limit, self.stop = options, limit, stop
        self.metrics, self.clock = metrics, clock
        self.buffer: list[Item] = []
        self.skipped: list[Stage] = []
        self.job: Job | None = None  # the window being recorded into, as last read

    # What the feeds call.

    def add(self, item: Item) -> None:
        self.buffer.append(item)
        first = self.job.listed_chunks if self.job else 0
        if len(self.buffer) >= segment_size(first) * self.options.chunk_size:
            self.flush()

    def skip(self, stage: Stage) -> None:
        self.skipped.append(stage)

    def flush(self) -> None:
        """Record what was added since the last flush, then send its chunks."""
        if self.stop.is_set():
            raise Stopped
        items, skipped = self.buffer, self.skipped
        self.buffer, self.skipped = [], []
        if not items:
            if skipped:
                self.record.commit(lambda pipe: [stage(pipe) for stage in skipped])
            return
        job = self._current()
        size = self.options.chunk_size
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        first = job.listed_chunks
        InputRecord(self.client.storage, job.results, job.id).write_segment(
            first, [[i.uri for i in c] for c in chunks], [[i.etag for i in c] for c in chunks])

        def stage(pipe: redis.client.Pipeline) -> None:
            self.jobs.record_listed(job.id, first + len(chunks), job.listed_images + len(items),
                                    items[-1].uri, pipe=pipe)
            for offset, chunk in enumerate(chunks):
                self.record.stage_pending(pipe, job.id, first + offset,
                                          min(i.seen_at for i in chunk))
            for item in items:
                item.stage(pipe)
            for other in skipped:
                other(pipe)

        self.record.commit(stage)
        self.job = self.jobs.get(job.id)
        self.metrics.recorded(len(items))
        logger.info("watch %s: recorded %d object(s) in %s, chunks %d-%d", self.record.name,
                    len(items), job.id, first, first + len(chunks) - 1)
        for offset, chunk in enumerate(chunks):
            self._send(job, first + offset, [i.uri for i in chunk])

    # Windows.

    def _current(self) -> Job:
        """The job of the window that holds now, opened (and older ones closed) as needed."""
        w = self.options.window_s
        start = max(window_start(self.clock(), w), self.record.window_start())
        job_id = window_job(self.record.name, start, w)
        if self.job is not None and self.job.id == job_id:
            # Read again: the record, not a copy in memory, says where the next chunk goes.
            self.job = self.jobs.get(job_id)
            return self.job
        self.close_ended(before=start)
        # Noted in the watch first: a job that exists is then always closed in the end.
        self.record.open_window(job_id, start, start + w)
        if self.jobs.exists(job_id) and self.jobs.get(job_id).listing_done:
            raise PermanentError(f"window job {job_id} was closed already and cannot take "
                                 "more objects (was the watch's record in Redis lost?)")
        self.jobs.create_or_resume(job_id, model=self.options.model,
                                   results=self.options.results, source=self.options.source,
                                   chunk_size=self.options.chunk_size, watch=self.record.name)
        self.job = self.jobs.get(job_id)
        logger.info("watch %s: window %s open until %s", self.record.name, job_id,
                    datetime.fromtimestamp(start + w, UTC).strftime("%H:%M:%S UTC"))
        return self.job

    def close_ended(self, before: float | None = None) -> int:
        """Close every open window that ended by ``before`` (default: now); how many."""
        cutoff = self.clock() if before is None else before
        closed = 0
        for job_id, end in sorted(self.record.open_windows().items()):
            if end <= cutoff:
                self._close(job_id)
                closed += 1
        return closed

    def _close(self, job_id: str) -> None:
        if self.job is not None and self.job.id == job_id:
            self.job = None
        if self.jobs.exists(job_id):
            job = self.jobs.get(job_id)
            if job.chunks < job.listed_chunks:  # recorded but not all sent (a stop, an error)
                resend_unfinished(self.client.storage, self.jobs, job,
                                  functools.partial(self._resend, job), unsent_only=True)
            self.jobs.record_listed(job_id, job.listed_chunks, job.listed_images, job.last_uri,
                                    done=True)
            InputRecord(self.client.storage, job.results, job_id).drop_from(job.listed_chunks)
            finish(self.client.storage, self.jobs, job_id, ended=self.jobs.end_submit(job_id),
                   repair=True)
            logger.info("watch %s: window %s closed with %d images", self.record.name, job_id,
                        job.listed_images)
        self.record.window_closed(job_id)

    def recover(self) -> None:
        """At start (and after an error): send the chunks of open windows that were recorded
        but never sent, and those sent whose message is neither queued, held by a worker nor
        done (lost); then close the windows that ended."""
        for job_id in sorted(self.record.open_windows()):
            if self.jobs.exists(job_id):
                # What is queued or held is read before what is done (as the sweeper does).
                held = held_task_ids(self.jobs.redis)
                job = self.jobs.get(job_id)
                resend_unfinished(self.client.storage, self.jobs, job,
                                  functools.partial(self._resend, job), held=held)
        self.job = None
        self.close_ended()

    def _resend(self, job: Job, item: Unfinished) -> None:
        logger.info("watch %s: %s chunk %d was recorded but %s: sending it", self.record.name,
                    job.id, item.chunk, "lost" if item.sent else "not sent")
        self._send(job, item.chunk, item.uris)

    def _send(self, job: Job, chunk: int, uris: list[str]) -> None:
        if not self.client.sender.wait_for_room(self.limit, self.stop):
            raise Stopped  # what is recorded and not sent goes at the next start
        self.client.sender.send(job, chunk, uris)
