"""Result lines and result parts: one JSON line per image, one part file per chunk.

    {results}/{job}/part-000000.jsonl    the lines of chunk 0, one per URI, in the chunk's order
    {"uri": "...", "ok": true,  "top": [{"index": 3, "label": "cat", "prob": 0.91}, ...],
     "model": "digits@20261127T...-3f2a"}
    {"uri": "...", "ok": false, "error": {"type": "ImageError", "message": "..."}, "model": null}

Everything about parts lives here: their names, their format, listing and reading a job's parts,
counting a chunk's lines, and replacing the lines of retried URIs. A part's name comes from
(job, chunk), so a redelivered chunk rewrites the same part instead of adding one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from rstream.shared.errors import NotFoundError, PermanentError
from rstream.shared.storage import Storage, join

Line = dict[str, Any]

PART_PREFIX = "part-"
PART_NAME = PART_PREFIX + "{chunk:06d}.jsonl"


def ok_line(uri: str, top: list[dict[str, Any]], model: str) -> Line:
    """A success line: the top classes and the model id that produced them."""
    return {"uri": uri, "ok": True, "top": top, "model": model}


def error_line(uri: str, exc: BaseException, model: str | None = None) -> Line:
    """An error line naming the exception class and its message."""
    return {"uri": uri, "ok": False,
            "error": {"type": type(exc).__name__, "message": str(exc)}, "model": model}


def encode(lines: Iterable[Line]) -> bytes:
    """JSONL bytes, one line per result, each ending in a newline."""
    return b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)


def decode(data: bytes, where: str = "result part") -> Iterator[Line]:
    """The lines of a JSONL part, skipping blank lines; PermanentError on a corrupt line."""
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError as exc:
            raise PermanentError(f"{where} line {number} is not JSON ({exc})") from None
        if not isinstance(line, dict) or "uri" not in line or "ok" not in line:
            raise PermanentError(f"{where} line {number} is not a result line")
        yield line


def job_prefix(results: str, job: str) -> str:
    """Where a job's parts and manifest live: ``{results}/{job}``."""
    return join(results, job)


def part_uri(results: str, job: str, chunk: int) -> str:
    """Where chunk ``chunk`` of ``job`` writes its lines."""
    return join(results, job, PART_NAME.format(chunk=chunk))


def part_uris(storage: Storage, results: str, job: str) -> list[str]:
    """The URIs of the job's parts in chunk order (zero-padded numbers sort as numbers)."""
    return sorted(storage.list(join(results, job, PART_PREFIX)))


def read_part(storage: Storage, uri: str) -> list[Line]:
    """The lines of one part; NotFoundError when it was never written."""
    return list(decode(storage.read(uri), uri))


def read_part_versioned(storage: Storage, uri: str) -> tuple[list[Line], str]:
    """The lines of one part and its ETag, for a write only if it is unchanged since."""
    data, etag = storage.read_versioned(uri)
    return list(decode(data, uri)), etag


def job_lines(storage: Storage, results: str, job: str, *,
              failed_only: bool = False) -> Iterator[Line]:
    """The job's result lines, part by part in chunk order, one part in memory at a time."""
    for uri in part_uris(storage, results, job):
        for line in read_part(storage, uri):
            if not failed_only or not line["ok"]:
                yield line


def failed_uris(storage: Storage, results: str, job: str, chunk: int) -> list[str] | None:
    """The URIs whose line in the chunk's part is an error; None when the part is missing."""
    try:
        lines = read_part(storage, part_uri(results, job, chunk))
    except NotFoundError:
        return None
    return [line["uri"] for line in lines if not line["ok"]]


def count_lines(lines: Iterable[Line]) -> dict[str, Any]:
    """ok / failed counts and images per model id, as the job record keeps them per chunk."""
    ok = failed = 0
    models: Counter[str] = Counter()
    for line in lines:
        if line["ok"]:
            ok += 1
            models[str(line["model"])] += 1
        else:
            failed += 1
    return {"ok": ok, "failed": failed, "models": dict(models)}


def failure_reasons(lines: Iterable[Line]) -> dict[str, int]:
    """How many lines failed with each error class (the ``error.type`` of the line)."""
    return dict(Counter(str(line["error"]["type"]) for line in lines if not line["ok"]))


def scored_by(lines: Iterable[Line]) -> str | None:
    """The model id named by the lines (a chunk's lines name one), or None when no image
    reached a model."""
    return next((str(line["model"]) for line in lines if line.get("model")), None)


def replace_lines(existing: Iterable[Line], retried: Iterable[Line]) -> list[Line]:
    """``existing`` with the lines of the retried URIs replaced in place.

    NotFoundError when a retried URI has no line to replace: a retry never adds lines.
    """
    new = {line["uri"]: line for line in retried}
    merged = [new.get(line["uri"], line) for line in existing]
    missing = set(new) - {line["uri"] for line in merged}
    if missing:
        raise NotFoundError(f"retried URIs are not in the part: {sorted(missing)[:3]}")
    return merged
