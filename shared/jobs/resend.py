"""Which chunks of a job still need a message, and sending them: the one rule that a
resubmission, ``rstream resume``, a watcher's windows, the sweeper and a job that failed as a
whole all follow.

A chunk is unfinished when the job's input record holds it (or a retry sent it) and its
part is not done. Who asks narrows that down:

- a resubmission and ``resume``: every unfinished chunk (a duplicate of a queued message is
  harmless: the job record counts a chunk once);
- a window that closes: only the chunks never sent;
- a watcher that starts again: also the chunks sent whose message is neither queued nor held
  by a worker (``held``, read before what is done, so a chunk finished in between is never
  taken for lost);
- the sweeper: chunks last sent before ``sent_before`` (Redis time), neither done, stalled,
  queued nor held, of any generation (a retry chunk holds the URIs whose lines are still
  errors).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from rstream.shared.jobs.inputs import InputRecord
from rstream.shared.jobs.results import failed_uris
from rstream.shared.jobs.store import Job, JobStore
from rstream.shared.queue.messages import task_id
from rstream.shared.storage import Storage


@dataclass(frozen=True)
class Unfinished:
    """A chunk that needs a message: its URIs (and their kept columns, for a first
    generation from a table), and whether one was ever sent."""

    chunk: int
    generation: int
    uris: list[str]
    sent: bool
    columns: list[dict[str, Any]] | None = None


def unfinished(storage: Storage, jobs: JobStore, job: Job, *,
               held: Collection[str] | None = None,
               sent_before: float | None = None) -> Iterator[Unfinished]:
    """The unfinished chunks of ``job`` in chunk order, a segment of the record at a time;
    ``held`` and ``sent_before`` narrow them down as the module says."""
    if sent_before is not None:
        yield from _lost(storage, jobs, job, held, sent_before)
        return
    record = InputRecord(storage, job.results, job.id)
    for segment in record.chunks_below(job.listed_chunks):
        numbers = [chunk for chunk, _, _ in segment]
        sent = jobs.sent_chunks(job.id, numbers, 0)
        done = jobs.done_chunks(job.id, numbers, 0)
        for chunk, uris, columns in segment:
            if chunk in done:
                continue
            if chunk in sent and held is not None and task_id(job.id, chunk, 0) in held:
                continue
            yield Unfinished(chunk, 0, uris, chunk in sent, columns)


def _lost(storage: Storage, jobs: JobStore, job: Job, held: Collection[str] | None,
          sent_before: float) -> Iterator[Unfinished]:
    record = InputRecord(storage, job.results, job.id)
    for chunk, generation in jobs.sent_not_settled(job.id, sent_before):
        if held is not None and task_id(job.id, chunk, generation) in held:
            continue
        # A retry chunk needs no columns: its lines keep the ones of the lines they replace.
        uris, columns = record.chunk_entries(chunk) if generation == 0 else \
            (failed_uris(storage, job.results, job.id, chunk), None)
        if uris:
            yield Unfinished(chunk, generation, uris, True, columns)


def resend_unfinished(storage: Storage, jobs: JobStore, job: Job,
                      send: Callable[[Unfinished], None], *, unsent_only: bool = False,
                      held: Collection[str] | None = None,
                      sent_before: float | None = None) -> int:
    """Call ``send`` for each unfinished chunk of ``job`` (``unsent_only``: those never
    sent); returns how many."""
    count = 0
    for item in unfinished(storage, jobs, job, held=held, sent_before=sent_before):
        if not (unsent_only and item.sent):
            send(item)
            count += 1
    return count
