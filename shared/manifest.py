"""The job manifest: written once, next to the parts, when every chunk is done."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from shared.constants import MANIFEST_NAME, PART_NAME
from shared.jobs import JobStore
from shared.storage import Storage, join


def part_uri(results: str, job: str, chunk: int) -> str:
    """Where chunk ``chunk`` of ``job`` writes its lines."""
    return join(results, job, PART_NAME.format(chunk=chunk))


def manifest_uri(results: str, job: str) -> str:
    return join(results, job, MANIFEST_NAME)


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat() if timestamp else None


def build_manifest(store: JobStore, job_id: str) -> dict[str, Any]:
    """Counts, model versions and timings of a finished job, from its Redis record."""
    job = store.get(job_id)
    models: Counter[str] = Counter()
    ok = failed = chunks = 0
    for _, counts in store.chunk_counts(job_id):
        chunks += 1
        ok += int(counts["ok"])
        failed += int(counts["failed"])
        models.update({str(k): int(v) for k, v in counts.get("models", {}).items()})
    started = float(job.fields.get("created_at", 0.0))
    finished = float(job.fields.get("finished_at") or job.fields.get("updated_at") or started)
    elapsed = max(finished - started, 1e-9)
    return {
        "job": job_id,
        "source": job.fields.get("source"),
        "results": join(job.fields.get("results", ""), job_id),
        "model": job.fields.get("model"),
        "images": ok + failed,
        "ok": ok,
        "failed": failed,
        "chunks": chunks,
        "models": dict(sorted(models.items())),
        "generation": job.fields.get("generation", 0),
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round((ok + failed) / elapsed, 2),
    }


def write_manifest(storage: Storage, store: JobStore, job_id: str) -> dict[str, Any]:
    """Build and write ``manifest.json`` for ``job_id``; returns what was written."""
    manifest = build_manifest(store, job_id)
    results = store.get(job_id).fields["results"]
    storage.write(manifest_uri(results, job_id), json.dumps(manifest, indent=2).encode())
    return manifest
