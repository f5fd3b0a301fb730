"""Submitting jobs: stream URIs into chunk tasks, with backpressure, resumable, and retries."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

from celery import Celery

from shared import modelref
from shared.celery_app import make_app, queued
from shared.constants import INFER_QUEUE, INFER_TASK
from shared.errors import ConfigError
from shared.jobs import JobStore, new_job_id
from shared.manifest import write_manifest
from shared.messages import ChunkMessage
from shared.registry import Registry
from shared.results import failed_uris
from shared.settings import Settings
from shared.sources import chunked, iter_uris
from shared.storage import Storage

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (chunks sent, images sent)


class Client:
    """What the producer needs: settings, storage, the job store and a Celery app."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.storage = Storage(settings)
        self.jobs = JobStore.from_url(settings.redis_url, settings.job_ttl)
        self.app = app or make_app(settings)

    def pending_chunks(self) -> int:
        """Chunk messages waiting in the infer queue (not counting ones being worked on)."""
        return queued(self.jobs.redis, INFER_QUEUE)

    def wait_for_room(self, limit: int) -> None:
        """Block while the infer queue holds ``limit`` chunks or more (0: never block)."""
        delay = 0.05
        while limit and self.pending_chunks() >= limit:
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def send(self, message: ChunkMessage) -> None:
        self.app.send_task(INFER_TASK, kwargs={"message": message.to_dict()},
                           queue=INFER_QUEUE, task_id=message.task_id)


def submit(source: str | Iterable[str], job: str | None = None, model: str | None = None,
           chunk_size: int | None = None, *, settings: Settings | None = None,
           max_pending: int | None = None, client: Client | None = None,
           progress: Progress | None = None) -> str:
    """Submit every image of ``source`` for scoring; returns the job id.

    ``source`` is a storage prefix, a manifest file or an iterable of URIs. Resubmitting the
    same job id with the same arguments resumes it: chunks already done are not sent again,
    and no chunk is counted twice.
    """
    settings = settings or (client.settings if client else Settings.from_env())
    client = client or Client(settings)
    model = check_model(model or settings.model, client)
    client.storage.resolve(settings.results)  # a refused output location fails here, not later
    size = chunk_size or settings.chunk_size
    limit = settings.max_pending_chunks if max_pending is None else max_pending
    job = job or new_job_id()
    source_text = source if isinstance(source, str) else "<list>"
    client.jobs.create_or_resume(job, model=model, results=settings.results,
                                 source=source_text, chunk_size=size)
    sent = images = 0
    for index, uris in enumerate(chunked(iter_uris(source, client.storage), size)):
        if client.jobs.is_done(job, index, 0):
            continue
        client.wait_for_room(limit)
        client.jobs.mark_sent(job, index, 0, len(uris))
        client.send(ChunkMessage(job, index, uris, model, settings.results))
        sent += 1
        images += len(uris)
        if progress:
            progress(sent, images)
    _end_submit(client, job)
    logger.info("job %s: sent %d chunks, %d images", job, sent, images)
    return job


def check_model(model: str, client: Client) -> str:
    """``model`` when it is a valid reference and, for the registry, exists; else ModelError
    or NotFoundError with the reason, before anything is sent.

    Whether torchvision's weights file is cached can only be known on a worker.
    """
    ref = modelref.parse(model)
    if ref.kind == "registry":
        registry = Registry(client.storage, client.settings.models)
        if ref.version:
            registry.read_meta(ref.name, ref.version)
        else:
            registry.production(ref.name)
    return model.strip()


def _end_submit(client: Client, job: str) -> None:
    if client.jobs.end_submit(job):  # every chunk was already done: nobody else will write it
        write_manifest(client.storage, client.jobs, job)


def retry(job: str, *, client: Client) -> int:
    """Resubmit the failed URIs of a finished job; returns how many were resubmitted.

    Each retry chunk replaces the lines of its URIs in the existing part, and the job's counts
    are corrected (not added to); the manifest is written again when the retry finishes.
    """
    record = client.jobs.get(job)
    results, model = record.results, record.model
    generation = client.jobs.start_retry(job)
    resubmitted = 0
    for chunk in range(record.chunks):
        failed = failed_uris(client.storage, results, job, chunk)
        if failed is None:
            logger.warning("job %s: part %d was never written; send its chunk again with "
                           "`rstream resume %s`", job, chunk, job)
            continue
        if failed:
            client.jobs.mark_sent(job, chunk, generation, len(failed))
            client.send(ChunkMessage(job, chunk, failed, model, results, generation))
            resubmitted += len(failed)
    _end_submit(client, job)
    return resubmitted


def resume(job: str, *, client: Client) -> int:
    """Send again every chunk of ``job`` that is not done; returns how many were sent.

    For a job that stopped progressing with nothing queued: a chunk message lost with a Redis
    crash, or chunks that stalled on a storage error now fixed. The job's own source, model,
    output and chunk size are used, so the chunks are the same ones and nothing is counted
    twice. A job submitted as a Python list cannot be re-listed: submit the same list again.
    """
    record = client.jobs.get(job)
    if record.source == "<list>":
        raise ConfigError(f"job {job} was submitted as a list of URIs, which rstream cannot list "
                          "again: call submit() with the same list and job id")
    settings = dataclasses.replace(client.settings, results=record.results)
    sent: list[int] = [0]

    def count(chunks: int, _images: int) -> None:
        sent[0] = chunks

    submit(record.source, job=job, model=record.model, chunk_size=record.chunk_size,
           settings=settings, client=client, progress=count)
    return sent[0]
