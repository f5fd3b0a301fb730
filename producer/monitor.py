"""Following jobs: status with rate and ETA, waiting with a progress bar, reading results."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from tqdm import tqdm

from rstream.shared.constants import INFER_QUEUE
from rstream.shared.jobs.finish import finish
from rstream.shared.jobs.results import job_lines
from rstream.shared.jobs.store import FAILED, RUNNING, Job, JobStore
from rstream.shared.queue import heartbeats
from rstream.shared.queue.inspect import queued
from rstream.shared.storage import Storage
from rstream.shared.training.runs import FINISHED, TrainRuns


@dataclass(frozen=True)
class Status:
    """A job's progress, with its rate and an estimate of the time left."""

    job: Job
    rate: float  # images per second since the job was created
    eta_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {**self.job.as_dict(), "processed": self.job.processed,
                "stalled": self.job.stalled, "finished": self.job.finished,
                "rate": round(self.rate, 2),
                "eta_s": None if self.eta_s is None else round(self.eta_s, 1)}


def status(store: JobStore, job_id: str) -> Status:
    job = store.get(job_id)
    end = job.finished_at or time.time()
    elapsed = max(end - job.created_at, 1e-9)
    rate = job.processed / elapsed
    remaining = job.images - job.processed
    # No estimate from a partial total: while the producer still lists, the total grows.
    eta = remaining / rate if rate > 0 and not job.finished and not job.submitting else None
    return Status(job, rate, eta)


def throughput(store: JobStore, job_id: str, bins: int = 24) -> dict[str, Any]:
    """Images per second over a job's life and the share of failures, from the time each
    chunk was recorded done (``done_at`` in its counts): ``bins`` equal spans from the job's
    creation to its last chunk. Chunks recorded before done_at existed are left out."""
    job = store.get(job_id)
    done = sorted((float(c["done_at"]), int(c.get("ok", 0)), int(c.get("failed", 0)))
                  for _, c in store.chunk_counts(job_id) if "done_at" in c)
    if not done:
        return {"job": job_id, "start": job.created_at, "span_s": 0.0, "bins": []}
    span = max(done[-1][0] - job.created_at, 1e-3)
    width = span / bins
    rows = [{"t": round(width * (i + 1), 3), "ok": 0, "failed": 0} for i in range(bins)]
    for at, ok, failed in done:
        row = rows[min(int((at - job.created_at) / width), bins - 1)]
        row["ok"] += ok
        row["failed"] += failed
    for row in rows:
        images = row["ok"] + row["failed"]
        row["rate"] = round(images / width, 3)
        row["failed_share"] = round(row["failed"] / images, 4) if images else 0.0
    return {"job": job_id, "start": job.created_at, "span_s": round(span, 3),
            "bin_s": round(width, 3), "bins": rows}


def notes(store: JobStore, job: Job, visibility_timeout: int) -> list[str]:
    """What a person needs to know about a job beyond its counts: a submission that stopped,
    a job that failed as a whole, no worker on the queue, stalled chunks."""
    lines = []
    if job.submitting and job.submit_error:
        lines.append(f"submission stopped after {job.images} of {job.listed_images} recorded "
                     f"images were sent ({job.submit_error}): run the same submit again, or "
                     f"`rstream resume {job.id}`, to continue")
    elif job.submitting and job.watch:
        from rstream.producer.watch.record import WatchRecord  # a window job of `rstream watch`

        until = WatchRecord(store.redis, job.watch).open_windows().get(job.id)
        lines.append(f"an open window of watch {job.watch}"
                     + (f", until {datetime.fromtimestamp(until, UTC):%H:%M:%S} UTC" if until
                        else "") + f": {job.listed_images} images recorded so far")
    elif job.submitting:
        lines.append(f"still submitting: {job.listed_images} images recorded so far")
    if job.status == FAILED:
        lines.append(f"failed as a whole: {job.last_error}. Every image gets an error line; "
                     f"fix the cause, then `rstream retry {job.id}`")
    if job.status == RUNNING:
        absent = heartbeats.absence(store.redis, INFER_QUEUE)
        if absent:
            lines.append(f"waiting: {absent}")
        else:
            hint = stuck_reason(store, job.id, visibility_timeout + 60)
            if hint:
                lines.append(hint)
    if job.stalled_chunks:
        lines.append(f"{job.stalled_chunks} chunk(s) could not write their part; last error: "
                     f"{job.last_error}. Fix it, then send them again with "
                     f"`rstream resume {job.id}`.")
    return lines


def stuck_reason(store: JobStore, job_id: str, idle_after_s: float) -> str | None:
    """Why a running job looks stuck, or None: chunks outstanding, none queued, and no chunk
    finished for ``idle_after_s`` seconds. Either no worker runs, or a chunk message was lost
    (a Redis crash can lose one); ``rstream resume`` sends the missing chunks again."""
    job = store.get(job_id)
    if job.status != RUNNING or job.submitting or job.stalled:
        return None
    idle = time.time() - (job.updated_at or job.created_at)
    waiting = queued(store.redis, INFER_QUEUE)
    if job.outstanding <= 0 or waiting or idle < idle_after_s:
        return None
    return (f"job {job_id}: no chunk finished for {idle:.0f} s, {job.outstanding} "
            "chunk(s) outstanding and none queued: the workers' sweeper sends lost chunks "
            "again after RSTREAM_VISIBILITY_TIMEOUT and a margin; to send them now, run "
            f"`rstream resume {job_id}`")


def wait(store: JobStore, storage: Storage, job_id: str, *, show_progress: bool = True,
         poll_s: float = 0.5, timeout_s: float | None = None,
         notice: Callable[[str], None] | None = None) -> Job:
    """Block until the job is done or cancelled, with a progress bar; returns the final record.

    ``notice`` (default: a line above the bar, when it is shown) hears at once when no live
    worker consumes the job's queue, when that changes, and when chunks stall. When the job
    is done but its manifest is missing (the worker that finished it died just then), the
    manifest is written here, so a finished job always has one.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    # Off a terminal (CI logs, files) the bar prints a line every 10 s instead of redrawing.
    interval = 0.2 if sys.stderr.isatty() else 10.0
    with tqdm(total=0, unit="img", disable=not show_progress, dynamic_ncols=True,
              mininterval=interval) as bar:
        say = notice or ((lambda text: bar.write(text, file=sys.stderr)) if show_progress
                         else (lambda _: None))
        notices = _Notices(store, job_id, say)
        wake = _Wakeup(store, job_id)  # a chunk done or the end wakes the loop at once
        while True:
            job = store.get(job_id)
            bar.total = max(job.listed_images if job.submitting else job.images, job.processed)
            bar.set_postfix(failed=job.failed, refresh=False)
            bar.update(job.processed - bar.n)
            if job.finished:
                break
            notices.check(job)
            if deadline is not None and time.monotonic() > deadline:
                wake.close()
                raise TimeoutError(f"job {job_id} not finished after {timeout_s} s")
            wake.wait(poll_s)
        wake.close()
    finish(storage, store, job_id, ended=False, repair=True)  # a done job gets its manifest
    return job


class _Wakeup:
    """Sleeps until the job's next event or ``timeout``; plain sleeps once Redis fails (the
    job record, polled, still says everything)."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.events: redis.client.PubSub | None = None
        try:
            self.events = store.events(job_id)
        except redis.RedisError:
            self.events = None

    def wait(self, timeout: float) -> None:
        if self.events is not None:
            try:
                self.events.get_message(timeout=timeout)
                return
            except redis.RedisError:
                self.close()
        time.sleep(timeout)

    def close(self) -> None:
        if self.events is not None:
            try:
                self.events.close()
            except redis.RedisError:
                pass
            self.events = None


class _Notices:
    """What ``wait`` tells as it happens: no worker on the queue, stalled chunks."""

    EVERY_S = 2.0

    def __init__(self, store: JobStore, job_id: str, say: Callable[[str], None]) -> None:
        self.store, self.job_id, self.say = store, job_id, say
        self.absent: str | None = None
        self.stalled = 0
        self.checked = 0.0

    def check(self, job: Job) -> None:
        if job.stalled_chunks > self.stalled:
            self.stalled = job.stalled_chunks
            self.say(f"job {self.job_id}: {job.stalled_chunks} chunk(s) stalled: "
                     f"{job.last_error}")
        if time.monotonic() - self.checked < self.EVERY_S:
            return
        self.checked = time.monotonic()
        absent = heartbeats.absence(self.store.redis, INFER_QUEUE)
        if absent and absent != self.absent:
            self.say(f"job {self.job_id}: waiting: {absent}")
        elif self.absent and not absent:
            self.say(f"job {self.job_id}: a worker consumes the {INFER_QUEUE!r} queue again")
        self.absent = absent


def results(store: JobStore, storage: Storage, job_id: str, *,
            failed_only: bool = False) -> Iterator[dict[str, Any]]:
    """The job's result lines, part by part in chunk order, streamed."""
    yield from job_lines(storage, store.get(job_id).results, job_id, failed_only=failed_only)


def wait_training(runs: TrainRuns, run: str, *, show_progress: bool = True,
                  poll_s: float = 1.0, timeout_s: float | None = None) -> dict[str, Any]:
    """Block until a fine-tune run ends, with a progress bar over its epochs; its outcome."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    interval = 0.5 if sys.stderr.isatty() else 10.0
    with tqdm(total=0, unit="epoch", disable=not show_progress, mininterval=interval) as bar:
        while True:
            state = runs.get(run)
            if state.get("status") in FINISHED:
                return state
            bar.total = int(state.get("epochs", 0))
            bar.set_postfix(status=state.get("status"), loss=state.get("loss"), refresh=False)
            bar.update(int(state.get("epoch", 0)) - bar.n)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"fine-tune {run} not finished after {timeout_s} s")
            time.sleep(poll_s)
