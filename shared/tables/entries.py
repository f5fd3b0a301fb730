"""How a source's images become a job's chunks: entries of (URI, kept columns), the columns
None for a source that keeps none (a folder, a URI list), grouped into chunks that carry
their URIs and, beside them, their columns."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

Columns = dict[str, Any]
Entry = tuple[str, Columns | None]


@dataclass(frozen=True)
class Chunk:
    """The URIs of one chunk and, for a table source, each one's kept columns."""

    uris: list[str]
    columns: list[Columns] | None = None


def plain(uris: Iterable[str]) -> Iterator[Entry]:
    """Entries of a source that keeps no columns."""
    return ((uri, None) for uri in uris)


def chunked(entries: Iterable[Entry], size: int) -> Iterator[Chunk]:
    """Chunks of ``size`` entries (the last may be shorter), one in memory at a time."""
    it = iter(entries)
    while batch := list(islice(it, size)):
        uris = [uri for uri, _ in batch]
        columns = [c for _, c in batch]
        kept = None if all(c is None for c in columns) else [c or {} for c in columns]
        yield Chunk(uris, kept)
