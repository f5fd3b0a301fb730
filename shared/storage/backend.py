"""The storage backend interface: one storage system (a directory, an S3 bucket), by keys.

:class:`rstream.shared.storage.Storage` routes URIs to backends; :mod:`rstream.shared.storage.local`
and :mod:`rstream.shared.storage.s3` implement this interface. Arrows run one way: storage ->
backends, localfs -> backends, s3 -> backends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from rstream.shared.errors import NotFoundError, ObjectTooLarge


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a stat knows of one object."""

    key: str
    size: int
    etag: str


class Backend(ABC):
    """One storage system, addressed by keys."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """The canonical URI of ``key``, used in error messages."""

    @abstractmethod
    def read_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        """The object's bytes and an ETag to pass to a conditional ``write``.

        NotFoundError when it is absent; ObjectTooLarge, before anything is read, when it is
        larger than ``max_bytes``.
        """

    def read(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes (see :meth:`read_versioned`)."""
        return self.read_versioned(key, max_bytes)[0]

    @abstractmethod
    def write(self, key: str, data: bytes, *, if_match: str | None = None,
              if_none_match: bool = False) -> None:
        """Write atomically: readers see the old object or the new one, never a part.

        ``if_match`` writes only while the object's ETag is still that one; ``if_none_match``
        writes only when no object exists. A lost condition raises PreconditionFailed.
        """

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and ETag; NotFoundError when absent."""

    @abstractmethod
    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, lazily, a page or a directory at a time,
        in key order (UTF-8 byte order, as S3 lists); only keys after ``start_after``."""

    @abstractmethod
    def read_lines(self, key: str) -> Iterator[str]:
        """The object's text, UTF-8, line by line, streamed; PermanentError if not UTF-8."""

    @abstractmethod
    def open_binary(self, key: str) -> BinaryIO:
        """The object as a seekable binary file to read from, never read whole into memory
        (a local file itself; an S3 object spooled to a temporary file); the caller closes
        it. NotFoundError when it is absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; absent objects are not an error."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFoundError:
            return False
        return True


def check_size(uri: str, size: int, max_bytes: int | None) -> None:
    """ObjectTooLarge when ``size`` exceeds ``max_bytes`` (None: no limit)."""
    if max_bytes is not None and size > max_bytes:
        raise ObjectTooLarge(f"{uri}: {size} bytes, above RSTREAM_MAX_OBJECT_BYTES={max_bytes}: "
                             "raise it to accept the object")
