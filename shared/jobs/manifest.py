"""The job manifest: written once, next to the parts, when every chunk is done."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from rstream.shared.jobs.results import job_prefix
from rstream.shared.jobs.store import JobStore
from rstream.shared.storage import Storage, join

MANIFEST_NAME = "manifest.json"


def manifest_uri(results: str, job: str) -> str:
    """Where the manifest of ``job`` is written: ``{results}/{job}/manifest.json``."""
    return join(job_prefix(results, job), MANIFEST_NAME)


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat() if timestamp else None


def build_manifest(store: JobStore, job_id: str) -> dict[str, Any]:
    """Counts, model ids and timings of a finished job, from its Redis record."""
    job = store.get(job_id)
    models: Counter[str] = Counter()
    ok = failed = chunks = 0
    for _, counts in store.chunk_counts(job_id):
        chunks += 1
        ok += int(counts["ok"])
        failed += int(counts["failed"])
        models.update({str(k): int(v) for k, v in counts.get("models", {}).items()})
    started = job.created_at
    finished = job.finished_at or job.updated_at or started
    elapsed = max(finished - started, 1e-9)
    return {
        "job": job_id,
        "source": job.source,
        "results": job_prefix(job.results, job_id),
        "model": job.model,
        "results_format": job.results_format or "jsonl",
        "images": ok + failed,
        "ok": ok,
        "failed": failed,
        "chunks": chunks,
        "models": dict(sorted(models.items())),
        "generation": job.generation,
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round((ok + failed) / elapsed, 2),
    }


def write_manifest(storage: Storage, store: JobStore, job_id: str,
                   files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build and write ``manifest.json`` for ``job_id``; returns what was written. ``files``:
    a parquet job's compacted files (``{"file", "rows"}`` each, names under the job's folder)."""
    manifest = build_manifest(store, job_id)
    if files is not None:
        manifest["files"] = files
    results = store.get(job_id).results
    storage.write(manifest_uri(results, job_id), json.dumps(manifest, indent=2).encode())
    return manifest
