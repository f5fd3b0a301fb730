"""A job's input record: the URIs of each of its chunks, as first listed, kept in storage.

    {results}/{job}/inputs/00000000.jsonl    {"chunk": 0, "uris": [...]} per line
                                             (a table's: "columns": [{...}, ...] beside them)
    {results}/{job}/inputs/00000001.jsonl    chunks 1..2
    {results}/{job}/inputs/00000003.jsonl    chunks 3..6, ...

Submission writes a segment of chunks, then records in the job (``listed_chunks``) that it
is there, then sends those chunks. Resubmitting a job, ``rstream resume``, the workers'
sweeper and a job that fails fast all work from this record, never from a new listing, so a
chunk always holds the same URIs. Segments grow from 1 chunk to :data:`SEGMENT_CHUNKS`
(the first chunk is sent at once; a million URIs are about 70 objects, not one per chunk).
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from typing import Any

from rstream.shared.errors import NotFoundError, PermanentError
from rstream.shared.jobs.results import job_prefix
from rstream.shared.storage import Storage, join

Columns = list[dict[str, Any]] | None  # a chunk's kept columns, one dict per URI
INPUTS_DIR = "inputs"
SEGMENT_CHUNKS = 256


def segment_size(first_chunk: int) -> int:
    """Chunks in the segment that starts at ``first_chunk``: 1, 1, 2, 4, ... up to 256."""
    return min(SEGMENT_CHUNKS, max(1, first_chunk))


class InputRecord:
    """The input record of one job, in storage."""

    def __init__(self, storage: Storage, results: str, job: str) -> None:
        self.storage = storage
        self.prefix = join(job_prefix(results, job), INPUTS_DIR)

    def segment_uri(self, first_chunk: int) -> str:
        return join(self.prefix, f"{first_chunk:08d}.jsonl")

    def write_segment(self, first_chunk: int, chunks: list[list[str]],
                      etags: list[list[str]] | None = None,
                      columns: list[Columns] | None = None) -> None:
        """Record ``chunks``, numbered from ``first_chunk``, as one segment (one write).

        ``etags`` (a watcher's): the version of each URI that was seen, kept beside it as
        ``"etags"``; readers of the record need only ``"uris"``. ``columns`` (a table's):
        each chunk's kept columns, one dict per URI, which every resend carries again.
        """
        lines = []
        for i, uris in enumerate(chunks):
            line: dict[str, object] = {"chunk": first_chunk + i, "uris": uris}
            if etags is not None:
                line["etags"] = etags[i]
            if columns is not None and columns[i] is not None:
                line["columns"] = columns[i]
            lines.append(json.dumps(line, ensure_ascii=False))
        self.storage.write(self.segment_uri(first_chunk), ("\n".join(lines) + "\n").encode())

    def segments(self) -> list[int]:
        """The first chunk of each recorded segment, in order."""
        firsts = []
        for uri in self.storage.list(self.prefix + "/"):
            name = uri.rsplit("/", 1)[-1]
            if name.endswith(".jsonl") and name[:-len(".jsonl")].isdigit():
                firsts.append(int(name[:-len(".jsonl")]))
        return sorted(firsts)

    def segments_below(self, below: int) -> Iterator[list[tuple[int, list[str]]]]:
        """Each segment's (chunk, URIs), in order, only chunks below ``below`` (what the job
        record says was recorded): one segment in memory at a time."""
        for segment in self.chunks_below(below):
            yield [(chunk, uris) for chunk, uris, _ in segment]

    def chunks_below(self, below: int) -> Iterator[list[tuple[int, list[str], Columns]]]:
        """:meth:`segments_below` with each chunk's kept columns (None: none kept)."""
        for first in self.segments():
            if first >= below:
                return
            yield [entry for entry in self._read(first) if entry[0] < below]

    def chunk(self, number: int) -> list[str]:
        """The URIs of one chunk; NotFoundError when no segment holds it."""
        return self.chunk_entries(number)[0]

    def chunk_entries(self, number: int) -> tuple[list[str], Columns]:
        """The URIs of one chunk and their kept columns; NotFoundError when no segment
        holds it."""
        firsts = self.segments()
        index = bisect.bisect_right(firsts, number) - 1
        if index >= 0:
            for chunk, uris, columns in self._read(firsts[index]):
                if chunk == number:
                    return uris, columns
        raise NotFoundError(f"chunk {number} is not in the input record {self.prefix}/")

    def drop_from(self, first_chunk: int) -> int:
        """Remove the segments that start at ``first_chunk`` or later: written, but never
        recorded in the job (a watcher stopped between the two). Returns how many."""
        stale = [first for first in self.segments() if first >= first_chunk]
        for first in stale:
            self.storage.delete(self.segment_uri(first))
        return len(stale)

    def delete(self) -> None:
        """Remove every segment (a submission refused before anything was sent)."""
        for first in self.segments():
            self.storage.delete(self.segment_uri(first))

    def _read(self, first: int) -> list[tuple[int, list[str], Columns]]:
        uri = self.segment_uri(first)
        found = []
        for number, raw in enumerate(self.storage.read(uri).splitlines(), 1):
            try:
                line = json.loads(raw)
                uris = [str(u) for u in line["uris"]]
                columns = line.get("columns")
                if columns is not None and (len(columns) != len(uris) or not all(
                        isinstance(c, dict) for c in columns)):
                    raise ValueError("columns do not match the URIs")
                found.append((int(line["chunk"]), uris, columns))
            except (ValueError, KeyError, TypeError):
                raise PermanentError(f"{uri} line {number} is corrupt: the job's input "
                                     "record cannot be read") from None
        return found
