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

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from producer.feeds import Item
from producer.submit import Client
from producer.watch_lock import Stage
from producer.watch_metrics import WatchMetrics
from producer.watches import WatchOptions, WatchRecord
from shared.celery_app import held_task_ids
from shared.errors import ConfigError, PermanentError
from shared.inputs import InputRecord, segment_size
from shared.jobs import DONE, Job
from shared.manifest import manifest_uri, write_manifest
from shared.messages import ChunkMessage

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
                self._send_recorded(job, lost_too=False)
            self.jobs.record_listed(job_id, job.listed_chunks, job.listed_images, job.last_uri,
                                    done=True)
            InputRecord(self.client.storage, job.results, job_id).drop_from(job.listed_chunks)
            finished = self.jobs.end_submit(job_id)
            if finished or self._missing_manifest(job_id):
                write_manifest(self.client.storage, self.jobs, job_id)
            logger.info("watch %s: window %s closed with %d images", self.record.name, job_id,
                        job.listed_images)
        self.record.window_closed(job_id)

    def _missing_manifest(self, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        return job.status == DONE and not self.client.storage.exists(
            manifest_uri(job.results, job_id))

    def recover(self) -> None:
        """At start (and after an error): send the chunks of open windows that were recorded
        but never sent, and those sent whose message is neither queued, held by a worker nor
        done (lost); then close the windows that ended."""
        for job_id in sorted(self.record.open_windows()):
            if self.jobs.exists(job_id):
                self._send_recorded(self.jobs.get(job_id), lost_too=True)
        self.job = None
        self.close_ended()

    def _send_recorded(self, job: Job, *, lost_too: bool) -> None:
        record = InputRecord(self.client.storage, job.results, job.id)
        # What is queued or held is read before what is done (as the sweeper does), so a
        # chunk finished in between is never taken for lost and sent twice.
        held = held_task_ids(self.jobs.redis) if lost_too else set()
        for first in record.segments():
            if first >= job.listed_chunks:
                break
            segment = [(c, u) for c, u in record.chunks_of(first) if c < job.listed_chunks]
            numbers = [c for c, _ in segment]
            sent = self.jobs.sent_chunks(job.id, numbers, 0)
            done = self.jobs.done_chunks(job.id, numbers, 0) if lost_too else set()
            for chunk, uris in segment:
                if chunk in sent and (not lost_too or chunk in done):
                    continue
                if chunk in sent and f"{job.id}:{chunk}:0" in held:
                    continue
                logger.info("watch %s: %s chunk %d was recorded but %s: sending it",
                            self.record.name, job.id, chunk,
                            "lost" if chunk in sent else "not sent")
                self._send(job, chunk, uris)

    def _send(self, job: Job, chunk: int, uris: list[str]) -> None:
        self.client.wait_for_room(self.limit, self.stop)
        if self.stop.is_set():
            raise Stopped  # what is recorded and not sent goes at the next start
        self.jobs.mark_sent(job.id, chunk, 0, len(uris))
        self.client.send(ChunkMessage(job.id, chunk, uris, job.model, job.results))
