"""Following jobs: status with rate and ETA, waiting with a progress bar, reading results."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from shared.celery_app import queued
from shared.constants import INFER_QUEUE
from shared.finetune_runs import FINISHED, TrainRuns
from shared.jobs import DONE, RUNNING, Job, JobStore
from shared.manifest import manifest_uri, write_manifest
from shared.results import job_lines
from shared.storage import Storage


@dataclass(frozen=True)
class Status:
    """A job's progress, with its rate and an estimate of the time left."""

    job: Job
    rate: float  # images per second since the job was created
    eta_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {**self.job.as_dict(), "processed": self.job.processed,
                "rate": round(self.rate, 2),
                "eta_s": None if self.eta_s is None else round(self.eta_s, 1)}


def status(store: JobStore, job_id: str) -> Status:
    job = store.get(job_id)
    end = job.finished_at or time.time()
    elapsed = max(end - job.created_at, 1e-9)
    rate = job.processed / elapsed
    remaining = job.images - job.processed
    eta = remaining / rate if rate > 0 and not job.finished else None
    return Status(job, rate, eta)


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
            "chunk(s) outstanding and none queued: check that a worker runs (rstream worker), "
            f"then send the missing chunks again with `rstream resume {job_id}`")


def wait(store: JobStore, storage: Storage, job_id: str, *, show_progress: bool = True,
         poll_s: float = 0.5, timeout_s: float | None = None) -> Job:
    """Block until the job is done or cancelled, with a progress bar; returns the final record.

    When the job is done but its manifest is missing (the worker that finished it died just
    then), the manifest is written here, so a finished job always has one.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    # Off a terminal (CI logs, files) the bar prints a line every 10 s instead of redrawing.
    interval = 0.2 if sys.stderr.isatty() else 10.0
    with tqdm(total=0, unit="img", disable=not show_progress, dynamic_ncols=True,
              mininterval=interval) as bar:
        while True:
            job = store.get(job_id)
            bar.total = max(job.images, job.processed)
            bar.set_postfix(failed=job.failed, refresh=False)
            bar.update(job.processed - bar.n)
            if job.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout_s} s")
            time.sleep(poll_s)
    if job.status == DONE and not storage.exists(manifest_uri(job.results, job_id)):
        write_manifest(storage, store, job_id)
    return job


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
