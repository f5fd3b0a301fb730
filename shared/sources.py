"""Where URIs come from: a storage prefix, a manifest file, or a list; all streamed.

Used by `rstream submit` and `rstream score` alike."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from itertools import islice

from shared.errors import PermanentError
from shared.storage import Storage

MANIFEST_SUFFIXES = (".txt", ".jsonl", ".list", ".manifest")


def iter_uris(source: str | Iterable[str], storage: Storage) -> Iterator[str]:
    """The URIs of ``source``, lazily, in a stable order.

    A string is a manifest when it names a file ending in .txt, .jsonl, .list or .manifest
    (on local disk, or in storage), one URI per line or JSON objects with a "uri" field;
    otherwise it is a storage prefix (a local directory, a path under the storage root, or
    s3://bucket/prefix) listed page by page. Anything else is taken as an iterable of URIs.
    """
    if not isinstance(source, str):
        yield from (str(u) for u in source)
        return
    if source.endswith(MANIFEST_SUFFIXES):
        yield from manifest(source, storage)
        return
    prefix = source
    backend, key = storage.resolve(source)
    if backend is storage.local and key and storage.local.path(key).is_dir():
        prefix = source.rstrip("/") + "/"  # "images" must not also match "images2/..."
    yield from storage.list(prefix)


def manifest(source: str, storage: Storage) -> Iterator[str]:
    """The URIs in a manifest file, on local disk or in storage, lazily where it is local."""
    if os.path.isfile(source):
        with open(source, encoding="utf-8") as lines:
            yield from _manifest_lines(lines, source)
        return
    data = storage.read(source)
    yield from _manifest_lines(data.decode("utf-8").splitlines(), source)


def _manifest_lines(lines: Iterable[str], source: str) -> Iterator[str]:
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                line = str(json.loads(line)["uri"])
            except (ValueError, KeyError, TypeError):
                raise PermanentError(
                    f"{source}:{number}: a JSON line needs a \"uri\" field: use one URI per "
                    "line or {\"uri\": ...} objects") from None
        yield line


def chunked(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of ``size`` items (the last may be shorter), holding one list at a time."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
