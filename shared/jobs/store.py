"""Job records in Redis: progress counted exactly once per chunk, whatever is redelivered.

A job is a hash plus three side hashes keyed by ``chunk:generation`` or ``chunk``:

- ``sent``: a chunk is counted into ``outstanding`` (and the job's totals) the first time it is
  sent, never again, so resubmitting a job resumes it instead of counting it twice;
- ``done``: a chunk leaves ``outstanding`` the first time its part is written; a redelivered
  chunk rewrites the same part and is not counted again;
- ``counts``: each chunk's latest ok/failed/model counts; the job's ``ok`` and ``failed`` move by
  the difference, so a retry that replaces lines corrects them instead of adding to them.

The job is done when nothing is outstanding and the producer has finished sending; the one
caller (worker or producer) whose atomic update makes it so is told to write the manifest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from rstream.shared.connections import redis_client
from rstream.shared.constants import (
    JOB_COUNTS_KEY,
    JOB_DONE_KEY,
    JOB_ERRORS_KEY,
    JOB_EVENTS_CHANNEL,
    JOB_KEY,
    JOB_SENT_KEY,
    JOBS_INDEX_KEY,
)
from rstream.shared.errors import (
    InvalidMessage,
    JobConflict,
    NotFoundError,
)
from rstream.shared.jobs import scripts
from rstream.shared.lua import LuaScript
from rstream.shared.names import JOB_ID
from rstream.shared.sources import same_location

RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"


def new_job_id() -> str:
    """A fresh job id that sorts by time: ``job-20261127-194512-3f2a``."""
    return datetime.now(UTC).strftime("job-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _flag(text: str) -> bool:
    return text not in ("", "0")


# How each field's text in the Redis hash becomes its Python value (by the field's annotation).
_DECODE: dict[str, Callable[[str], Any]] = {
    "str": str, "int": int, "float": float, "float | None": float, "bool": _flag}


@dataclass(frozen=True)
class Job:
    """A snapshot of a job record; :meth:`from_hash` is the one place that builds one.

    Each field is a field of the record's Redis hash, under the same name.
    """

    id: str
    status: str = RUNNING
    model: str = ""
    results: str = ""
    source: str = ""
    chunk_size: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    images: int = 0  # images sent (first submission), counted once per chunk
    chunks: int = 0
    outstanding: int = 0  # chunks sent whose part is not written yet
    ok: int = 0
    failed: int = 0
    generation: int = 0  # 0 for the first submission, n after the n-th retry
    submitting: bool = False  # the producer is still sending chunks
    stalled_chunks: int = 0  # chunks whose part could not be written, for good
    last_error: str = ""
    listed_chunks: int = 0  # chunks in the input record (shared/jobs/inputs.py)
    listed_images: int = 0
    last_uri: str = ""  # the last URI recorded: a folder's listing continues after it
    listing_done: bool = False  # the input record holds every chunk of the job
    submit_error: str = ""  # why the last submission stopped before it sent everything
    watch: str = ""  # a window job of this watch (producer/watch/); "" for a submitted job
    table: str = ""  # a table source's spec (shared/tables/reader.py Table.to_text); "" for none
    results_format: str = ""  # jsonl or parquet (RSTREAM_RESULTS_FORMAT); "" is jsonl

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[bytes, bytes]) -> Job:
        """The record from its Redis hash; unknown hash fields are ignored."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls)[1:]:
            text = raw.get(f.name.encode())
            if text is not None:
                values[f.name] = _DECODE[str(f.type)](text.decode())
        return cls(job_id, **values)

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-able data, its id under ``job``."""
        data = dataclasses.asdict(self)
        return {"job": data.pop("id"), **data}

    def same_submission(self, *, source: str, model: str, results: str,
                        chunk_size: int, table: str = "", results_format: str = "") -> bool:
        """Whether a submission with these arguments is the one that made this job (so it
        resumes the job), not another one under the same id (refused)."""
        return same_location(self.source, source) and (
            self.model, self.results, self.chunk_size, self.table,
            self.results_format or "jsonl") == (
            model, results, chunk_size, table, results_format or "jsonl")

    @property
    def processed(self) -> int:
        return self.ok + self.failed

    @property
    def stalled(self) -> bool:
        """Every chunk still outstanding failed for good (its part could not be written)."""
        return (self.status == RUNNING and not self.submitting
                and 0 < self.outstanding <= self.stalled_chunks)

    @property
    def finished(self) -> bool:
        """Nothing more will happen without a person: done, cancelled, failed, or stalled."""
        return self.status in (DONE, CANCELLED, FAILED) or self.stalled


RETRY_CAP_S = 2.0  # longest pause between two tries of a Redis call during an outage

class JobStore:
    """Reads and updates job records; every update is one atomic Redis call."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.redis = client
        self.ttl = ttl
        self._create = LuaScript(client, scripts.CREATE)
        self._mark_sent = LuaScript(client, scripts.MARK_SENT)
        self._complete = LuaScript(client, scripts.COMPLETE)
        self._end_submit = LuaScript(client, scripts.END_SUBMIT)
        self._record_failure = LuaScript(client, scripts.RECORD_FAILURE)
        self._fail = LuaScript(client, scripts.FAIL)
        self._cancel = LuaScript(client, scripts.CANCEL)
        self._start_retry = LuaScript(client, scripts.START_RETRY)

    @classmethod
    def from_url(cls, url: str, ttl: int, ride_out_s: float = 30.0,
                 connect_timeout_s: float = 5.0) -> JobStore:
        """A store on ``url`` whose calls ride out a Redis outage of about ``ride_out_s`` s
        (0: one attempt, for a server that must answer at once).

        Every update here is idempotent (HSETNX guards), so a call retried after a dropped
        reply does not count anything twice.
        """
        retries = max(0, math.ceil(ride_out_s / RETRY_CAP_S))
        client = redis_client(
            url, socket_timeout=30, socket_connect_timeout=connect_timeout_s,
            retry=Retry(ExponentialBackoff(cap=RETRY_CAP_S, base=0.2), retries),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        return cls(client, ttl)

    def _keys(self, job: str) -> list[str]:
        return [k.format(job=job) for k in (JOB_KEY, JOB_SENT_KEY, JOB_DONE_KEY, JOB_COUNTS_KEY)]

    def create(self, job: str, *, model: str, results: str, source: str, chunk_size: int,
               watch: str = "", table: str = "", results_format: str = "") -> bool:
        """Create the record in one step; True for the one caller of many that made it,
        False when it exists (then nothing is changed).

        ``watch`` names the watch whose window this job is (set when it is created).
        """
        key = JOB_KEY.format(job=JOB_ID.check(job))
        now = time.time()
        fields: dict[str, str | int | float] = {
            "status": RUNNING, "model": model, "results": results, "source": source,
            "chunk_size": chunk_size, "created_at": now, "updated_at": now,
            "outstanding": 0, "chunks": 0, "images": 0, "ok": 0, "failed": 0,
            "generation": 0, "submitting": 1}
        if watch:
            fields["watch"] = watch
        if table:
            fields["table"] = table
        if results_format:
            fields["results_format"] = results_format
        pairs = [item for pair in fields.items() for item in pair]
        return bool(self._create([key, JOBS_INDEX_KEY], [self.ttl, now, job, *pairs]))

    def check_same(self, job: str, *, model: str, results: str, source: str,
                   chunk_size: int, table: str = "", results_format: str = "") -> Job:
        """The existing record when it was made by the same submission; else JobConflict."""
        existing = self.get(job)
        if not existing.same_submission(source=source, model=model, results=results,
                                        chunk_size=chunk_size, table=table,
                                        results_format=results_format):
            raise JobConflict(
                f"job {job} already exists with another source, model, output, chunk size or "
                "table columns: "
                "choose another --job name, or resubmit exactly the same one to resume it")
        return existing

    def create_or_resume(self, job: str, *, model: str, results: str, source: str,
                         chunk_size: int, watch: str = "", table: str = "",
                         results_format: str = "") -> bool:
        """Create the record, or resume one made by the same submission; True when new."""
        if self.create(job, model=model, results=results, source=source,
                       chunk_size=chunk_size, watch=watch, table=table,
                       results_format=results_format):
            return True
        self.check_same(job, model=model, results=results, source=source,
                        chunk_size=chunk_size, table=table, results_format=results_format)
        # A resumed job sends its stalled chunks again: forget why they stalled.
        self.redis.hset(JOB_KEY.format(job=job), mapping={
            "submitting": 1, "updated_at": time.time(), "stalled_chunks": 0, "submit_error": ""})
        self.redis.delete(JOB_ERRORS_KEY.format(job=job))
        return False

    def record_listed(self, job: str, chunks: int, images: int, last_uri: str, *,
                      done: bool = False, pipe: redis.client.Pipeline | None = None) -> None:
        """The input record now holds ``chunks`` chunks (``images`` URIs, ``last_uri`` last);
        ``done``: and that is all of them. With ``pipe``, the update is queued there (a
        watcher records it in one transaction with its own state)."""
        (pipe if pipe is not None else self.redis).hset(JOB_KEY.format(job=job), mapping={
            "listed_chunks": chunks, "listed_images": images, "last_uri": last_uri,
            "listing_done": int(done), "updated_at": time.time()})

    def submission_stopped(self, job: str, reason: str) -> None:
        """The producer stopped before sending everything (Ctrl-C, a source error): keep why."""
        self.redis.hset(JOB_KEY.format(job=job),
                        mapping={"submit_error": reason[:500], "updated_at": time.time()})

    def delete(self, job: str) -> None:
        """Forget a job entirely (a submission refused before anything was sent)."""
        keys = [k.format(job=job) for k in (JOB_KEY, JOB_SENT_KEY, JOB_DONE_KEY,
                                            JOB_COUNTS_KEY, JOB_ERRORS_KEY)]
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys)
            pipe.zrem(JOBS_INDEX_KEY, job)
            pipe.execute()

    def get(self, job: str) -> Job:
        raw = self.redis.hgetall(JOB_KEY.format(job=job))
        if not raw:
            raise NotFoundError(f"job {job} not found (unknown, or expired after "
                                "RSTREAM_JOB_TTL): list recent jobs with `rstream jobs`")
        return Job.from_hash(job, raw)

    def mark_sent(self, job: str, chunk: int, generation: int, images: int) -> bool:
        """Count a chunk as sent and note when; False when it was counted before (a resume,
        a duplicate, the sweeper): then only the time is renewed."""
        keys = self._keys(job)[:2]
        return bool(self._mark_sent(keys, [f"{chunk}:{generation}", images, generation, self.ttl]))

    def mark_sent_many(self, job: str, chunks: Sequence[tuple[int, int]],
                       generation: int) -> list[bool]:
        """:meth:`mark_sent` for many (chunk, images) of one job, in one round trip."""
        keys = self._keys(job)[:2]
        return [bool(counted) for counted in self._mark_sent.many(
            [(keys, [f"{chunk}:{generation}", images, generation, self.ttl])
             for chunk, images in chunks])]

    def is_done(self, job: str, chunk: int, generation: int) -> bool:
        return bool(self.redis.hexists(JOB_DONE_KEY.format(job=job), f"{chunk}:{generation}"))

    def exists(self, job: str) -> bool:
        return bool(self.redis.exists(JOB_KEY.format(job=job)))

    def done_chunks(self, job: str, chunks: list[int], generation: int) -> set[int]:
        """Which of ``chunks`` are done (one Redis call)."""
        return self._chunks_in(JOB_DONE_KEY.format(job=job), chunks, generation)

    def sent_chunks(self, job: str, chunks: list[int], generation: int) -> set[int]:
        """Which of ``chunks`` were ever sent (one Redis call)."""
        return self._chunks_in(JOB_SENT_KEY.format(job=job), chunks, generation)

    def _chunks_in(self, key: str, chunks: list[int], generation: int) -> set[int]:
        if not chunks:
            return set()
        found = self.redis.hmget(key, [f"{chunk}:{generation}" for chunk in chunks])
        return {chunk for chunk, value in zip(chunks, found, strict=True) if value is not None}

    def was_sent(self, job: str, chunk: int, generation: int) -> bool:
        """Whether the producer recorded this chunk as sent (a message may claim anything)."""
        return bool(self.redis.hexists(JOB_SENT_KEY.format(job=job), f"{chunk}:{generation}"))

    def complete(self, job: str, chunk: int, generation: int, counts: dict[str, Any]) -> bool:
        """Record a written part; True for the one caller who must now write the manifest.

        InvalidMessage when the job record never sent this chunk: its counts are not touched.
        """
        key, sent, done, counts_key = self._keys(job)
        now = time.time()
        # done_at: when this chunk's part was recorded, for the job's throughput over time
        args = [f"{chunk}:{generation}", chunk, json.dumps({**counts, "done_at": now}), now,
                self.ttl]
        finished = int(self._complete([key, done, counts_key, sent], args))
        if finished < 0:
            raise InvalidMessage(f"job {job} never sent chunk {chunk} (generation {generation})")
        self._tell(job, "finished" if finished else "chunk")
        return bool(finished)

    def _tell(self, job: str, event: str) -> None:
        """Let whoever waits on the job (``rstream wait``) know now, not at its next poll."""
        self.redis.publish(JOB_EVENTS_CHANNEL.format(job=job), event)

    def events(self, job: str) -> redis.client.PubSub:
        """A subscription to the job's events (see :meth:`_tell`)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(JOB_EVENTS_CHANNEL.format(job=job))
        return pubsub

    def record_failure(self, job: str, chunk: int, generation: int, error: str) -> None:
        """A chunk whose part could not be written, for good: `rstream status` shows it, and
        `rstream resume` sends the chunk again."""
        keys = [JOB_KEY.format(job=job), JOB_ERRORS_KEY.format(job=job)]
        self._record_failure(keys, [f"{chunk}:{generation}", error[:500], time.time(), self.ttl])

    def end_submit(self, job: str) -> bool:
        """The producer has sent every chunk; True when that finished the job (all done)."""
        finished = bool(self._end_submit([JOB_KEY.format(job=job)], [time.time()]))
        if finished:
            self._tell(job, "finished")
        return finished

    def fail(self, job: str, reason: str) -> bool:
        """Fail a running job as a whole (its model cannot be loaded): ``status`` and ``wait``
        say why at once; True for the one caller that failed it."""
        failed = bool(self._fail([JOB_KEY.format(job=job)], [reason[:1000], time.time()]))
        if failed:
            self._tell(job, "failed")
        return failed

    def cancel(self, job: str) -> Job:
        """Cancel the job if it runs (one atomic step: one that finished meanwhile stays
        as it ended); the record after."""
        self.get(job)  # NotFoundError for an unknown job
        if self._cancel([JOB_KEY.format(job=job)], [time.time()]):
            self._tell(job, "cancelled")
        return self.get(job)

    def start_retry(self, job: str) -> int:
        """Reopen a finished job for a retry in one atomic step; returns the new generation.
        JobConflict when it still runs (a concurrent retry included) or was cancelled."""
        generation = int(self._start_retry([JOB_KEY.format(job=job)], [time.time()]))
        if generation == 0:
            self.get(job)  # NotFoundError with its hint
        if generation == -1:
            raise JobConflict(f"job {job} is still running (or another retry just started it): "
                              "wait for it before a retry")
        if generation == -2:
            raise JobConflict(f"job {job} was cancelled: a cancelled job is not retried; "
                              "submit its images again as a new job")
        return generation

    def sent_not_settled(self, job: str, sent_before: float) -> list[tuple[int, int]]:
        """(chunk, generation) of the chunks last sent before ``sent_before`` (Redis time)
        that are neither done nor stalled (a stalled chunk waits for `rstream resume`)."""
        keys = [k.format(job=job) for k in (JOB_SENT_KEY, JOB_DONE_KEY, JOB_ERRORS_KEY)]
        sent = self.redis.hgetall(keys[0])
        if not sent:
            return []
        settled = set(self.redis.hkeys(keys[1])) | set(self.redis.hkeys(keys[2]))
        found = []
        for field, when in sent.items():
            if field not in settled and float(when) < sent_before:
                chunk, _, generation = field.decode().partition(":")
                found.append((int(chunk), int(generation)))
        return sorted(found)

    def running_jobs(self, limit: int = 1000) -> list[Job]:
        """The newest ``limit`` jobs that are running."""
        return [job for job in self.recent(limit) if job.status == RUNNING]

    def chunk_counts(self, job: str) -> Iterator[tuple[int, dict[str, Any]]]:
        """Each chunk's latest counts, in no particular order."""
        for chunk, raw in self.redis.hscan_iter(JOB_COUNTS_KEY.format(job=job), count=1000):
            yield int(chunk), json.loads(raw)

    def recent(self, limit: int = 20) -> list[Job]:
        """The newest jobs first; expired ones are dropped from the index."""
        found = []
        for raw in self.redis.zrevrange(JOBS_INDEX_KEY, 0, limit * 2):
            job = raw.decode()
            try:
                found.append(self.get(job))
            except NotFoundError:
                self.redis.zrem(JOBS_INDEX_KEY, job)
        return found[:limit]
