"""The end of a job: the one function that every place where a job can end calls.

A job ends inside one atomic update of its record (``store.py``): the last chunk's
``complete`` or the producer's ``end_submit``, whichever comes last, marks it done (a job
that failed as a whole stays failed) and tells exactly one caller so. That caller writes the
manifest here. A job that is done without a manifest (its finisher died between the two) gets
one from the next caller that looks (``repair``): ``rstream wait``, a watcher closing the
window.
A parquet job's parts are compacted into Parquet files (``parquet.py``) before its manifest is
written, so a finisher that dies mid-compaction leaves a job done without a manifest, and the
repair pass compacts it again from the start (the files' names are deterministic).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rstream.shared.jobs.manifest import manifest_uri, write_manifest
from rstream.shared.jobs.parquet import compact
from rstream.shared.jobs.store import DONE, JobStore
from rstream.shared.storage import Storage

logger = logging.getLogger(__name__)


def finish(storage: Storage, jobs: JobStore, job_id: str, *, ended: bool,
           repair: bool = False,
           log_fields: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Write the manifest of ``job_id`` when ``ended`` (this caller's update ended the job);
    with ``repair``, also when the job is done and has none. Returns the manifest written,
    else None. ``log_fields``: the structured fields of the caller's log lines (a chunk's)."""
    if not ended:
        if not repair:
            return None
        job = jobs.get(job_id)
        if job.status != DONE or storage.exists(manifest_uri(job.results, job_id)):
            return None
    job = jobs.get(job_id)
    files = None
    if job.results_format == "parquet":
        files = compact(storage, job.results, job_id, storage.settings.parquet_rows_per_file)
    manifest = write_manifest(storage, jobs, job_id, files)
    logger.info("job %s finished: %d ok, %d failed", job_id, manifest["ok"], manifest["failed"],
                extra=log_fields)
    return manifest
