"""Object storage behind one small interface: a local directory and S3.

:class:`Storage` takes URIs and routes them: ``s3://bucket/key`` goes to the S3 backend
(:mod:`rstream.shared.storage.s3`); ``file:///abs/path``, absolute paths and plain relative paths go
to :class:`~rstream.shared.storage.local.LocalBackend`, which is confined to its root. Backends
speak keys; the router speaks URIs, and ``list`` gives back URIs in the same style as the prefix it
was asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlparse

from rstream.shared.errors import AccessDeniedError, PermanentError
from rstream.shared.storage.backend import Backend, ObjectInfo
from rstream.shared.storage.local import LocalBackend

if TYPE_CHECKING:
    from rstream.shared.settings import Settings


class Storage:
    """Routes URIs to backends: the one storage object the rest of rstream uses."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.local = LocalBackend(settings.storage_root)
        self._s3: dict[str, Backend] = {}

    def resolve(self, uri: str) -> tuple[Backend, str]:
        """The backend and key for ``uri``."""
        # Split by hand, not with urlparse: '?' and '#' are ordinary characters in a key.
        if uri.startswith("s3://"):
            bucket, _, key = uri[len("s3://"):].partition("/")
            return self._s3_backend(bucket, uri), key
        if uri.startswith("file://"):
            path = "/" + uri[len("file://"):].partition("/")[2]  # drops the host part
            return self.local, self._local_key(unquote(path), uri)
        parsed = urlparse(uri)
        if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive, not a scheme
            raise PermanentError(
                f"{uri}: unsupported scheme {parsed.scheme}://: use s3://, file:// or a path")
        return self.local, self._local_key(uri, uri)

    def _local_key(self, path: str, uri: str) -> str:
        """The key of a local path, relative to the root; a trailing slash is kept (a prefix)."""
        trailing_slash = path.endswith("/")
        if os.path.isabs(path):
            root = str(self.local.root)
            absolute = os.path.realpath(path)  # the root is a real path too
            if absolute != root and not absolute.startswith(root + os.sep):
                raise AccessDeniedError(
                    f"{uri}: outside the storage root (RSTREAM_STORAGE_ROOT): use a path "
                    "inside the root, or change RSTREAM_STORAGE_ROOT")
            path = os.path.relpath(absolute, root)
        key = os.path.normpath(path) if path else "."
        key = "" if key == "." else key
        return key + "/" if key and trailing_slash else key

    def _s3_backend(self, bucket: str, uri: str) -> Backend:
        allowed = self.settings.allowed_buckets
        if not bucket:
            raise PermanentError(f"{uri}: no bucket in the URI: use s3://bucket/key")
        if allowed and bucket not in allowed:
            raise AccessDeniedError(
                f"{uri}: bucket {bucket!r} is not in RSTREAM_ALLOWED_BUCKETS "
                f"({','.join(allowed)}): add it there")
        if bucket not in self._s3:
            from rstream.shared.storage.s3 import (
                S3Backend,  # boto3 is slow to import; only S3 users pay
            )

            self._s3[bucket] = S3Backend(bucket, self.settings)
        return self._s3[bucket]

    def read(self, uri: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes; ObjectTooLarge before reading when it exceeds ``max_bytes``."""
        backend, key = self.resolve(uri)
        return backend.read(key, max_bytes)

    def read_versioned(self, uri: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        backend, key = self.resolve(uri)
        return backend.read_versioned(key, max_bytes)

    def write(self, uri: str, data: bytes, *, if_match: str | None = None,
              if_none_match: bool = False) -> None:
        backend, key = self.resolve(uri)
        backend.write(key, data, if_match=if_match, if_none_match=if_none_match)

    def stat(self, uri: str) -> ObjectInfo:
        backend, key = self.resolve(uri)
        return backend.stat(key)

    def exists(self, uri: str) -> bool:
        backend, key = self.resolve(uri)
        return backend.exists(key)

    def delete(self, uri: str) -> None:
        backend, key = self.resolve(uri)
        backend.delete(key)

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        """URIs under ``prefix``, lazily, in key order and in the prefix's own style; only
        those after the URI ``start_after`` (given in the same style) when it is set."""
        for info in self.list_info(prefix, start_after):
            yield info.key

    def list_info(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Like :meth:`list`, with sizes and ETags; ``key`` holds the URI."""
        backend, key = self.resolve(prefix)
        after = None
        if start_after:
            if not start_after.startswith(prefix):
                raise ValueError(f"start_after {start_after!r} is not under {prefix!r}")
            after = key + start_after[len(prefix):]
        for info in backend.list(key, after):
            yield ObjectInfo(prefix + info.key[len(key):], info.size, info.etag)

    def read_lines(self, uri: str) -> Iterator[str]:
        """The object's text, line by line, streamed; PermanentError if it is not UTF-8."""
        backend, key = self.resolve(uri)
        return backend.read_lines(key)


    def open_binary(self, uri: str) -> BinaryIO:
        """The object as a seekable binary file, not read into memory; the caller closes it."""
        backend, key = self.resolve(uri)
        return backend.open_binary(key)


def join(prefix: str, *names: str) -> str:
    """``prefix`` and ``names`` joined with single slashes."""
    parts = [prefix.rstrip("/")] + [n.strip("/") for n in names]
    return "/".join(p for p in parts if p)
