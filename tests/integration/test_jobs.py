"""Job records on a real Redis: each chunk counted once, whatever is redelivered or retried."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from rstream.shared.errors import PermanentError
from rstream.shared.jobs.store import CANCELLED, DONE, RUNNING, JobStore


@pytest.fixture
def store(redis_server: str) -> JobStore:
    return JobStore.from_url(redis_server, ttl=600)


def new_job(store: JobStore, **overrides: object) -> str:
    job = f"job-{uuid.uuid4().hex[:8]}"
    args = {"model": "m", "results": "results", "source": "images/", "chunk_size": 4}
    args.update(overrides)
    assert store.create_or_resume(job, **args)  # type: ignore[arg-type]
    return job


def counts(ok: int, failed: int) -> dict[str, object]:
    return {"ok": ok, "failed": failed, "models": {"m@1": ok}}


def test_redelivered_chunk_is_counted_once_and_finishes_the_job_once(store: JobStore) -> None:
    job = new_job(store)
    for chunk in range(2):
        assert store.mark_sent(job, chunk, 0, 4)
    assert not store.mark_sent(job, 1, 0, 4), "a second send of the same chunk is not counted"
    assert not store.end_submit(job)
    assert not store.complete(job, 0, 0, counts(4, 0))
    assert not store.complete(job, 0, 0, counts(4, 0)), "a redelivery does not count again"
    assert store.complete(job, 1, 0, counts(3, 1)), "the last chunk finishes the job"
    assert not store.complete(job, 1, 0, counts(3, 1)), "only one caller writes the manifest"
    record = store.get(job)
    assert record.status == DONE
    assert (record.ok, record.failed, record.images, record.chunks) == (7, 1, 8, 2)


def test_a_record_is_typed_and_built_in_one_place(store: JobStore) -> None:
    job = new_job(store)
    store.mark_sent(job, 0, 0, 4)
    record = store.get(job)
    assert (record.status, record.submitting, record.outstanding, record.images) == (
        RUNNING, True, 1, 4)
    assert isinstance(record.created_at, float) and record.finished_at is None
    assert record.as_dict()["job"] == job and record.as_dict()["chunk_size"] == 4
    store.end_submit(job)
    assert store.get(job).submitting is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.status = DONE  # type: ignore[misc]


def test_job_done_before_submission_ends_is_finished_by_end_submit(store: JobStore) -> None:
    job = new_job(store)
    store.mark_sent(job, 0, 0, 4)
    assert not store.complete(job, 0, 0, counts(4, 0)), "the producer is still sending"
    assert store.get(job).status == RUNNING
    assert store.end_submit(job)
    assert store.get(job).status == DONE


def test_retry_replaces_counts_instead_of_adding(store: JobStore) -> None:
    job = new_job(store)
    store.mark_sent(job, 0, 0, 4)
    store.end_submit(job)
    store.complete(job, 0, 0, counts(2, 2))
    generation = store.start_retry(job)
    assert generation == 1
    assert store.mark_sent(job, 0, generation, 2)
    store.end_submit(job)
    assert store.get(job).status == RUNNING
    assert store.complete(job, 0, generation, counts(3, 1))
    record = store.get(job)
    assert (record.ok, record.failed, record.images) == (3, 1, 4)
    assert record.status == DONE


def test_concurrent_completions_elect_exactly_one_manifest_writer(store: JobStore) -> None:
    job = new_job(store)
    chunks = 40
    for chunk in range(chunks):
        store.mark_sent(job, chunk, 0, 1)
    store.end_submit(job)
    winners: list[int] = []

    def complete(chunk: int) -> None:
        for _ in range(2):  # each chunk delivered twice
            if store.complete(job, chunk, 0, counts(1, 0)):
                winners.append(chunk)

    threads = [threading.Thread(target=complete, args=(c,)) for c in range(chunks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert store.get(job).ok == chunks


def test_resubmitting_with_another_source_is_refused(store: JobStore) -> None:
    job = new_job(store)
    assert not store.create_or_resume(job, model="m", results="results", source="images/",
                                      chunk_size=4), "same arguments resume"
    with pytest.raises(PermanentError, match="choose another --job"):
        store.create_or_resume(job, model="m", results="results", source="other/",
                               chunk_size=4)


def test_the_results_format_is_recorded_and_part_of_the_same_submission(
        store: JobStore) -> None:
    job = new_job(store, results_format="parquet")
    assert store.get(job).results_format == "parquet"
    with pytest.raises(PermanentError, match="choose another --job"):
        store.create_or_resume(job, model="m", results="results", source="images/",
                               chunk_size=4, results_format="jsonl")
    plain = new_job(store)
    assert store.get(plain).results_format == ""
    assert not store.create_or_resume(plain, model="m", results="results", source="images/",
                                      chunk_size=4, results_format="jsonl"), "'' is jsonl"


def test_cancel_and_retry_of_running_job(store: JobStore) -> None:
    job = new_job(store)
    with pytest.raises(PermanentError, match="still running"):
        store.start_retry(job)
    assert store.cancel(job).status == CANCELLED


def test_wait_learns_of_the_end_at_once_not_at_its_next_poll(store: JobStore,
                                                           tmp_path: Path) -> None:
    from rstream.producer import monitor
    from rstream.shared.storage import Storage
    from tests.settings import make_settings

    job = new_job(store)
    store.mark_sent(job, 0, 0, 4)
    store.end_submit(job)
    storage = Storage(make_settings(storage_root=str(tmp_path)))
    ended: list[float] = []

    def wait() -> None:
        monitor.wait(store, storage, job, show_progress=False, poll_s=30.0)
        ended.append(time.monotonic())

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)  # the waiter is in its 30 s sleep
    finished_at = time.monotonic()
    assert store.complete(job, 0, 0, counts(4, 0))
    waiter.join(20)
    assert ended and ended[0] - finished_at < 5, "woken by the job's event, not its poll"


def test_updates_survive_a_server_that_lost_its_scripts(store: JobStore,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A Redis that restarts forgets its scripts. SCRIPT FLUSH empties the cache for real; the
    # race seen in CI (EVALSHA answering NOSCRIPT even right after SCRIPT LOAD, against a Redis
    # that had just reloaded its append-only file) cannot be caused on demand, so EVALSHA is
    # made to answer NOSCRIPT every time here. Each update must still land, counted once.
    job = new_job(store)
    assert store.mark_sent(job, 0, 0, 4) and store.mark_sent(job, 1, 0, 4)
    store.redis.script_flush()
    assert not store.complete(job, 0, 0, counts(4, 0))

    def forgetful(*_: object) -> None:
        raise redis.exceptions.NoScriptError("No matching script. Please use EVAL.")

    monkeypatch.setattr(store.redis, "evalsha", forgetful)
    assert not store.complete(job, 0, 0, counts(4, 0)), "a redelivery does not count again"
    assert store.end_submit(job) is False
    assert store.complete(job, 1, 0, counts(4, 0)), "the last chunk finishes the job"
    record = store.get(job)
    assert (record.status, record.ok, record.outstanding) == (DONE, 8, 0)
