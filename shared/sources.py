"""Where URIs come from: a folder (a storage prefix), a list file, or a Python list; streamed.

A source is resolved once, and checked, before anything is recorded or sent:

- ``s3://bucket/prefix``: everything under that prefix, taken as a folder (``/`` is added),
  listed page by page in key order;
- a path under ``RSTREAM_STORAGE_ROOT`` (plain or ``file://``): a folder, listed in the same
  key order; never a string prefix (``photo`` does not mean ``photos/``);
- a list file, ending in .txt, .jsonl, .list or .manifest, on this machine (relative to the
  current directory, or absolute) or in storage: one URI per line, or JSON objects with a
  ``"uri"`` field; ``#`` comments and blank lines are skipped;
- a table, ending in .csv, .parquet or .ndjson (or any list file given a table format):
  a row per image, its URI in one column and other columns kept beside it
  (``shared/tables/``);
- in Python, any iterable of URI strings.

A folder or bucket that does not exist, a path outside the root, a bucket that is not
allowed, and a list file that cannot be read are refused with the reason. Used by
``rstream submit`` and ``rstream score`` alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import BinaryIO

from rstream.shared.errors import ConfigError, NotFoundError, PermanentError
from rstream.shared.storage import Storage
from rstream.shared.tables.entries import Entry, plain
from rstream.shared.tables.reader import SUFFIXES, Table, read_rows
from rstream.shared.uris import carried

MANIFEST_SUFFIXES = (".txt", ".jsonl", ".list", ".manifest")
TABLE_SUFFIXES = tuple(s for s in SUFFIXES if s not in MANIFEST_SUFFIXES)
LIST = "<list>"  # the recorded source of a job submitted as a list of URIs, with its digest


@dataclass(frozen=True)
class Source:
    """A resolved source: ``kind`` is ``folder``, ``file`` (a list file on this machine),
    ``stored-list`` (a list file in storage) or ``list``; ``location`` is what is listed or
    read, canonical, so that the same source given two ways compares equal."""

    kind: str
    location: str
    items: Iterable[str] | None = None  # kind "list" only
    table: Table | None = None  # a list file read as a table (shared/tables/)

    def check(self, storage: Storage) -> None:
        """Read a list file through once, so that a bad line or bad text is refused before
        anything is recorded (streamed: memory stays flat whatever its length). A Parquet
        table is checked by its schema and first row only: its columns are typed."""
        if self.table is not None and self.table.format == "parquet":
            next(self.entries(storage), None)
        elif self.kind in ("file", "stored-list"):
            for _ in self.entries(storage):
                pass

    def entries(self, storage: Storage, *, start_after: str = "",
                skip: int = 0) -> Iterator[Entry]:
        """(URI, kept columns) lazily, as :meth:`uris` gives the URIs; the columns are None
        unless the source is a table."""
        if self.table is None:
            return plain(self.uris(storage, start_after=start_after, skip=skip))
        location = self.location

        def opener() -> BinaryIO:  # read_rows closes it
            if self.kind == "file":
                return open(location, "rb")
            return storage.open_binary(location)

        rows = read_rows(opener, location, self.table)
        return islice(((_carried(uri, location), kept) for uri, kept in rows), skip, None)

    def uris(self, storage: Storage, *, start_after: str = "", skip: int = 0) -> Iterator[str]:
        """The URIs, lazily, in a stable order. A folder continues after ``start_after`` (its
        listing is in key order); a list skips its first ``skip`` entries."""
        if self.kind == "folder":
            listed = storage.list(self.location, start_after=start_after or None)
            return (_carried(uri, self.location) for uri in listed)
        if self.kind == "list":
            assert self.items is not None
            return islice((_carried(str(u), f"item {n}") for n, u in enumerate(self.items)),
                          skip, None)
        lines = (_local_lines(self.location) if self.kind == "file"
                 else storage.read_lines(self.location))
        return islice(_manifest_lines(lines, self.location), skip, None)


def resolve(source: str | Iterable[str], storage: Storage, *,
            local_files: bool = True, hints: bool = True, table: Table | None = None) -> Source:
    """``source`` resolved and checked; ConfigError, NotFoundError or AccessDeniedError with
    the reason and the fix when it cannot be scored. ``local_files=False`` (the HTTP API)
    takes list files from storage only, never from this machine's own file system;
    ``hints=False`` leaves out the names of folders nearby (a caller who may not read).
    ``table`` reads a list file as a table (a .csv, .parquet or .ndjson file is one anyway)."""
    if not isinstance(source, str):
        if table is not None:
            raise ConfigError("a table format, URI column or kept columns need a list file "
                              "as the source, not a list of URIs")
        return list_source(source)
    text = source.strip()
    if not text:
        raise ConfigError("no source given: name a folder, s3://bucket/prefix/ or a list file")
    if table is not None or text.lower().endswith(TABLE_SUFFIXES):
        table = (table or Table()).for_location(text)
    if table is not None or text.endswith(MANIFEST_SUFFIXES):
        if local_files and os.path.isfile(text):
            return Source("file", os.path.abspath(text), table=table)
        if not storage.exists(text):
            raise NotFoundError(f"{text}: no such list file (here or under the storage "
                                "root, RSTREAM_STORAGE_ROOT)")
        return Source("stored-list", text, table=table)
    if text.startswith("s3://"):
        return Source("folder", text if text.endswith("/") else text + "/")
    backend, key = storage.resolve(text)  # AccessDeniedError outside the root
    if backend is storage.local:
        path = storage.local.path(key) if key else storage.local.root
        if path.is_file():
            raise ConfigError(
                f"{text} is a file, not a folder or a list file: to score single images, "
                f"put their URIs in a list file ({', '.join(MANIFEST_SUFFIXES)})")
        if not path.is_dir():
            raise NotFoundError(f"{text}: no such folder under the storage root "
                                f"(RSTREAM_STORAGE_ROOT){_near(path) if hints else ''}")
    return Source("folder", text.rstrip("/") + "/" if text.rstrip("/") else "")


def list_source(items: Iterable[str]) -> Source:
    """A source of inline URIs. A list or tuple (and the HTTP API's inline list) is recorded
    as ``<list> sha256:DIGEST`` of its URIs in their order, so that the same job id with
    another list is another submission (refused), not this one resumed. A one-shot iterable
    (a generator) is streamed as it comes, recorded as ``<list>``: it cannot be compared."""
    if not isinstance(items, Sequence) or isinstance(items, str):
        return Source("list", LIST, items)
    digest = hashlib.sha256()
    for uri in items:
        digest.update(str(uri).encode("utf-8", "surrogateescape") + b"\n")
    return Source("list", f"{LIST} sha256:{digest.hexdigest()[:32]}", items)


def is_list(location: str) -> bool:
    """Whether a job's recorded source is a list of inline URIs (:func:`list_source`)."""
    return location == LIST or location.startswith(LIST + " ")


def same_location(recorded: str, given: str) -> bool:
    """Whether a submission of ``given`` is the one recorded as ``recorded``: the same text;
    for inline lists, the same digest when both have one (a streamed list has none)."""
    if is_list(recorded) and is_list(given):
        return LIST in (recorded, given) or recorded == given
    return recorded == given


def _near(path: os.PathLike[str]) -> str:
    """A hint naming folders beside ``path`` whose names start like its name."""
    parent, name = os.path.split(os.fspath(path))
    try:
        near = sorted(e.name for e in os.scandir(parent) if e.is_dir() and e.name.startswith(name))
    except OSError:
        return ""
    return f" (did you mean {near[0]}/ ?)" if near else ""


def _local_lines(path: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as lines:
            yield from lines
    except UnicodeDecodeError as exc:
        raise PermanentError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): "
                             "save the list file as UTF-8") from None


def _manifest_lines(lines: Iterable[str], source: str) -> Iterator[str]:
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                uri = json.loads(line)["uri"]
            except (ValueError, KeyError, TypeError):
                raise PermanentError(
                    f"{source}:{number}: a JSON line needs a \"uri\" field: use one URI per "
                    "line or {\"uri\": ...} objects") from None
            if not isinstance(uri, str) or not uri.strip():
                raise PermanentError(f"{source}:{number}: \"uri\" is not a non-empty string")
            line = uri.strip()
        yield _carried(line, f"{source}:{number}")


def _carried(uri: str, where: str) -> str:
    """``uri`` as a chunk carries it (``shared/uris.py``); ConfigError naming where it came
    from when it is too long to carry at all."""
    try:
        return carried(uri)
    except ValueError as exc:
        raise ConfigError(f"{where}: a URI {exc}: no object has a name that long") from None


def chunked(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of ``size`` items (the last may be shorter), holding one list at a time."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
