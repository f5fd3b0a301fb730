"""Submitting jobs: record the inputs, send chunk tasks with backpressure, resume, retry.

A first submission lists its source as a stream and, segment by segment, writes each chunk's
URIs to the job's input record (``shared/jobs/inputs.py``), records that in the job, then sends
those chunks. So a chunk holds the same URIs forever: resubmitting the same job, ``rstream
resume`` and the workers' sweeper send chunks from the record, never from a new listing, and
files that land under a folder later belong to a new job. A source that is refused before
anything is recorded leaves no job behind; a submission stopped later (Ctrl-C, a storage
error, a bad line in a list file) keeps its record and the reason, and the same command
continues it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rstream.producer.client import Client
from rstream.shared import sources
from rstream.shared.errors import ConfigError
from rstream.shared.jobs.finish import finish
from rstream.shared.jobs.inputs import InputRecord, segment_size
from rstream.shared.jobs.parquet import require_pyarrow
from rstream.shared.jobs.resend import Unfinished, resend_unfinished
from rstream.shared.jobs.results import failed_uris
from rstream.shared.jobs.sender import SEND_BATCH, Outgoing
from rstream.shared.jobs.store import CANCELLED, Job, new_job_id
from rstream.shared.models import refs
from rstream.shared.models.registry import Registry
from rstream.shared.names import JOB_ID
from rstream.shared.settings import Settings
from rstream.shared.sources import Source
from rstream.shared.tables.entries import Chunk, Entry, chunked
from rstream.shared.tables.reader import Table

logger = logging.getLogger(__name__)


@dataclass
class Sent:
    """How far a submission got; the progress callback sees it after every batch of chunks
    sent."""

    job: str
    listed_images: int = 0  # in the input record
    chunks: int = 0  # sent by this call
    images: int = 0
    resumed: bool = False  # the job existed: chunks came from its record first
    notes: list[str] = field(default_factory=list)
    stopped: str = ""  # why sending stopped early: the job was cancelled meanwhile


Progress = Callable[[Sent], None]


def submit(source: str | Iterable[str] | Source, job: str | None = None,
           model: str | None = None, chunk_size: int | None = None, *,
           settings: Settings | None = None, max_pending: int | None = None,
           client: Client | None = None, progress: Progress | None = None,
           table: Table | None = None, results_format: str | None = None) -> str:
    """Submit every image of ``source`` for scoring; returns the job id.

    ``source`` is a folder, a list file or an iterable of URIs (see ``shared/sources.py``);
    ``table`` reads the list file as a table whose kept columns go into the result lines;
    ``results_format`` (jsonl or parquet, default RSTREAM_RESULTS_FORMAT) is the job's.
    Resubmitting the same job id with the same arguments continues it from its input record:
    chunks already done are not sent again, and no chunk is counted twice. Other arguments
    under the same id are refused.
    """
    return submit_counted(source, job, model, chunk_size, settings=settings,
                          max_pending=max_pending, client=client, progress=progress,
                          table=table, results_format=results_format).job


def submit_counted(source: str | Iterable[str] | Source, job: str | None = None,
                   model: str | None = None, chunk_size: int | None = None, *,
                   settings: Settings | None = None, max_pending: int | None = None,
                   client: Client | None = None, progress: Progress | None = None,
                   table: Table | None = None, results_format: str | None = None) -> Sent:
    """:func:`submit`, returning what was sent."""
    return prepare(source, job, model, chunk_size, settings=settings, max_pending=max_pending,
                   client=client, progress=progress, table=table,
                   results_format=results_format).run()


def prepare(source: str | Iterable[str] | Source, job: str | None = None,
            model: str | None = None, chunk_size: int | None = None, *,
            settings: Settings | None = None, max_pending: int | None = None,
            client: Client | None = None, progress: Progress | None = None,
            local_files: bool = True, hints: bool = True,
            table: Table | None = None, results_format: str | None = None) -> Submission:
    """A submission with its model, output, job id and source checked, nothing recorded yet:
    :meth:`Submission.run` does the rest (or :meth:`~Submission.open`, then
    :meth:`~Submission.send`, for a server that answers in between). ``local_files=False``
    (the HTTP API) reads list files from storage only; ``hints=False`` names no folder nearby
    in its errors; ``table`` reads a list file as a table (``shared/tables/``);
    ``results_format`` overrides RSTREAM_RESULTS_FORMAT for this job."""
    settings = settings or (client.settings if client else Settings.from_env())
    client = client or Client(settings)
    if results_format is not None:
        settings = dataclasses.replace(settings, results_format=results_format)
    model = check_model(model or settings.model, client)
    client.storage.resolve(settings.results)  # a refused output location fails here, not later
    if settings.results_format == "parquet":
        require_pyarrow()  # whichever host ends the job compacts it: refuse one that cannot
    job = JOB_ID.check(job or new_job_id())
    resolved = source if isinstance(source, Source) else sources.resolve(
        source, client.storage, local_files=local_files, hints=hints, table=table)
    limit = settings.max_pending_chunks if max_pending is None else max_pending
    return Submission(client, job, resolved, model=model, results=settings.results,
                      size=chunk_size or settings.chunk_size, limit=limit, progress=progress,
                      results_format=settings.results_format)


def check_model(model: str, client: Client) -> str:
    """``model`` when it is a valid reference and, for the registry, exists; else ModelError
    or NotFoundError with the reason, before anything is sent.

    Whether torchvision's weights file is cached can only be known on a worker.
    """
    ref = refs.parse(model)
    if ref.kind == "registry":
        registry = Registry(client.storage, client.settings.models)
        if ref.version:
            registry.read_meta(ref.name, ref.version)
        else:
            registry.production(ref.name)
    return model.strip()


class Submission:
    """One submission of a job: open its record, send its chunks, end the submission."""

    def __init__(self, client: Client, job: str, source: Source, *, model: str,
                 results: str, size: int, limit: int, progress: Progress | None,
                 results_format: str = "jsonl") -> None:
        self.client, self.jobs, self.job = client, client.jobs, job
        self.source, self.model, self.results = source, model, results
        self.results_format = results_format
        self.size, self.limit, self.progress = size, limit, progress
        self.inputs = InputRecord(client.storage, results, job)
        self.sent = Sent(job)
        self.record = Job(job)  # the record, once created or resumed
        self.created = False
        self.keep_record = False  # a server keeps a record it answered for, even if empty
        self.table = source.table.to_text() if source.table else ""
        self._fresh: Iterable[Entry] | None = None

    def run(self) -> Sent:
        self.open()
        return self.send()

    def open(self, *, resume: bool = True) -> bool:
        """Check a new job's source (its first URIs) and create the record in one atomic
        step, or resume the record of the same submission (JobConflict for another one);
        True when this call created it. ``resume=False`` leaves an existing job as it is."""
        fresh = None if self.jobs.exists(self.job) else self._first_uris()
        model, results, source = self.model, self.results, self.source.location
        if resume:
            self.created = self.jobs.create_or_resume(self.job, model=model, results=results,
                                                      source=source, chunk_size=self.size,
                                                      table=self.table,
                                                      results_format=self.results_format)
        else:
            self.created = fresh is not None and self.jobs.create(
                self.job, model=model, results=results, source=source, chunk_size=self.size,
                table=self.table, results_format=self.results_format)
            if not self.created:
                self.jobs.check_same(self.job, model=model, results=results, source=source,
                                     chunk_size=self.size, table=self.table,
                                     results_format=self.results_format)
        self._fresh = fresh if self.created else None  # another one created it meanwhile
        return self.created

    def send(self) -> Sent:
        """Send what :meth:`open` opened: the recorded chunks that are not done (a resumed
        job), then list the rest of the source, record it and send it; end the submission."""
        created, fresh = self.created, self._fresh
        record = self.record = self.jobs.get(self.job)
        self.sent.resumed = not created
        try:
            if not created:
                self.sent.listed_images = record.listed_images
                unsent: list[Outgoing] = []
                resend_unfinished(self.client.storage, self.jobs, record,
                                  lambda item: self._gather(unsent, item))
                self._send(unsent)
            if not record.listing_done:
                self._list_record_send(record, fresh)
            elif not created and self.source.kind == "folder":
                self.sent.notes.append(
                    f"job {self.job} continued from its input record ({record.listed_images} "
                    f"images, as first listed); files added to {self.source.location} since "
                    "are not part of it: submit them as a new job")
        except _Ended as ended:
            self.sent.stopped = str(ended)
        except BaseException as exc:
            self._stopped(created, exc)
            raise
        # Every chunk may be done already: then this ends the job.
        finish(self.client.storage, self.jobs, self.job, ended=self.jobs.end_submit(self.job))
        logger.info("job %s: sent %d chunks, %d images", self.job, self.sent.chunks,
                    self.sent.images)
        return self.sent

    def _first_uris(self) -> Iterable[Entry]:
        """The new job's entries, with the first one already fetched: a source that is
        missing, refused or empty fails here, before any record exists."""
        self.source.check(self.client.storage)
        uris = self.source.entries(self.client.storage)
        first = next(uris, None)
        if first is None:
            raise ConfigError(f"{self._shown()}: no images there: check the folder, prefix or "
                              "list file")
        return _chain(first, uris)

    def _shown(self) -> str:
        return "the list" if self.source.kind == "list" else self.source.location

    def _stopped(self, created: bool, exc: BaseException) -> None:
        if created and self.sent.listed_images == 0 and not self.keep_record:
            self.jobs.delete(self.job)  # nothing was recorded: leave no job behind
            self.inputs.delete()
            return
        reason = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else \
            f"{type(exc).__name__}: {exc}"
        try:
            self.jobs.submission_stopped(self.job, reason)
        except Exception:
            logger.exception("could not record why the submission of %s stopped", self.job)

    def _list_record_send(self, record: Job, fresh: Iterable[Entry] | None) -> None:
        """List the source (or its rest), record each segment, then send its chunks."""
        uris = fresh if fresh is not None else self.source.entries(
            self.client.storage, start_after=record.last_uri, skip=record.listed_images)
        first, images = record.listed_chunks, record.listed_images
        segment: list[Chunk] = []
        for chunk in chunked(uris, self.size):
            segment.append(chunk)
            if len(segment) == segment_size(first):
                images = self._record(first, segment, images, done=False)
                first += len(segment)
                segment = []
        self._record(first, segment, images, done=True)

    def _record(self, first: int, segment: list[Chunk], images: int, *,
                done: bool) -> int:
        """Write one segment to the input record, note it in the job, send its chunks."""
        self._check_still_running()
        if segment:
            self.inputs.write_segment(first, [c.uris for c in segment],
                                      columns=[c.columns for c in segment])
            images += sum(len(c.uris) for c in segment)
        last = segment[-1].uris[-1] if segment else self.jobs.get(self.job).last_uri
        self.jobs.record_listed(self.job, first + len(segment), images, last, done=done)
        self.sent.listed_images = images
        self._send([(first + i, c.uris, c.columns) for i, c in enumerate(segment)])
        return images

    def _check_still_running(self) -> None:
        # A job that failed as a whole goes on: its images still get their (error) lines,
        # which workers write without loading anything. A cancelled one stops here.
        job = self.jobs.get(self.job)
        if job.status == CANCELLED:
            raise _Ended(f"job {self.job} was cancelled while it was being submitted: "
                         f"{job.images} images were sent, the rest was not")

    def _gather(self, chunks: list[Outgoing], item: Unfinished) -> None:
        """Collect chunks to send again, sending them a batch at a time."""
        chunks.append((item.chunk, item.uris, item.columns))
        if len(chunks) == SEND_BATCH:
            self._send(chunks)
            chunks.clear()

    def _send(self, chunks: list[Outgoing]) -> None:
        """Send ``chunks``, (chunk, URIs, columns) each, in batches as large as the queue has
        room for (see ``shared/jobs/sender.py``: one pipelined round trip for the marks, one
        for the messages)."""
        while chunks:
            room = self.client.sender.wait_for_room(self.limit)
            batch, chunks = chunks[:room], chunks[room:]
            self.client.sender.send_many(self.record, batch)
            self.sent.chunks += len(batch)
            self.sent.images += sum(len(uris) for _, uris, _ in batch)
            if self.progress:
                self.progress(self.sent)


class _Ended(Exception):
    """The job was cancelled while it was being submitted."""


def _chain(first: Entry, rest: Iterable[Entry]) -> Iterable[Entry]:
    yield first
    yield from rest


def retry(job: str, *, client: Client) -> int:
    """Resubmit the failed URIs of a finished job; returns how many were resubmitted.

    Each retry chunk replaces the lines of its URIs in the existing part, and the job's counts
    are corrected (not added to); the manifest is written again when the retry finishes.
    """
    record = client.jobs.get(job)
    generation = client.jobs.start_retry(job)
    resubmitted = 0
    for chunk in range(record.chunks):
        failed = failed_uris(client.storage, record.results, job, chunk)
        if failed is None:
            logger.warning("job %s: part %d was never written; send its chunk again with "
                           "`rstream resume %s`", job, chunk, job)
            continue
        if failed:
            client.sender.send(record, chunk, failed, generation)
            resubmitted += len(failed)
    finish(client.storage, client.jobs, job, ended=client.jobs.end_submit(job))
    return resubmitted


def resume(job: str, *, client: Client, progress: Progress | None = None) -> Sent:
    """Send again every recorded chunk of ``job`` that is not done, and finish listing its
    source if the first submission stopped before the end; returns what was sent.

    For a job that stopped progressing with nothing queued (a chunk message lost with a Redis
    crash; chunks that stalled on a storage error now fixed) or whose submission was cut
    short. The job's own source, model, output and chunk size are used.
    """
    return prepare_resume(job, client=client, progress=progress).run()


def prepare_resume(job: str, *, client: Client, progress: Progress | None = None,
                   local_files: bool = True) -> Submission:
    """:func:`resume` with its checks done (the job, its source), nothing sent yet."""
    record = client.jobs.get(job)
    if record.watch:
        if not record.listing_done:
            raise ConfigError(f"job {job} is an open window of watch {record.watch}: its "
                              "watcher sends its chunks and closes it when the window is "
                              "over (`rstream status` lists the watches); resume it after that")
        source = Source("list", record.source, ())  # its input record is complete
    elif sources.is_list(record.source):
        if not record.listing_done:
            raise ConfigError(f"job {job} was submitted as a list of URIs and its submission "
                              "stopped before the end: call submit() with the same list and "
                              "job id to continue it")
        source = Source("list", record.source, ())
    else:
        source = sources.resolve(record.source, client.storage, local_files=local_files,
                                 table=Table.from_text(record.table))
    return prepare(source, job=job, model=record.model, chunk_size=record.chunk_size,
                   settings=dataclasses.replace(client.settings, results=record.results,
                                                results_format=record.results_format or "jsonl"),
                   client=client, progress=progress)

