"""Object storage behind one small interface: a local directory and S3.

:class:`Storage` takes URIs and routes them: ``s3://bucket/key`` goes to the S3 backend
(``shared.s3``); ``file:///abs/path``, absolute paths and plain relative paths go to
:class:`LocalBackend`, which is confined to its root. Backends speak keys; the router speaks
URIs, and ``list`` gives back URIs in the same style as the prefix it was asked for.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from shared.errors import AccessDeniedError, NotFoundError, PermanentError, TransientError

if TYPE_CHECKING:
    from shared.settings import Settings

_TMP_PREFIX = ".rstream-tmp-"


class PreconditionFailed(PermanentError):
    """Raised when a conditional write loses: the object changed since it was read, or exists."""


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
    def read(self, key: str) -> bytes:
        """The object's bytes; NotFoundError when it is absent."""

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and an ETag to pass to a conditional ``write``."""

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
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, lazily, a page or a directory at a time."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; absent objects are not an error."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFoundError:
            return False
        return True


class LocalBackend(Backend):
    """A directory; keys are relative paths that may not resolve outside it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.realpath(root))

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def path(self, key: str) -> Path:
        """The file behind ``key``; refuses any key that resolves outside the root."""
        if "\x00" in key:
            raise AccessDeniedError(f"{key!r}: a NUL byte is not allowed in a path")
        path = Path(os.path.realpath(self.root / key))
        if path != self.root and self.root not in path.parents:
            raise AccessDeniedError(
                f"{key}: resolves to {path}, outside the storage root {self.root}: use a path "
                "inside the root or change RSTREAM_STORAGE_ROOT")
        return path

    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        path = self.path(key)
        try:
            with open(path, "rb") as f:  # the ETag of the very file that is read
                return f.read(), _etag(os.fstat(f.fileno()))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{self.uri(key)}: no such file") from None
        except PermissionError as exc:
            raise AccessDeniedError(f"{self.uri(key)}: {exc.strerror}") from None

    def write(self, key: str, data: bytes, *, if_match: str | None = None,
              if_none_match: bool = False) -> None:
        path = self.path(key)
        if path == self.root or path.is_dir():
            raise PermanentError(f"{self.uri(key)}: is a directory: name a file to write")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.path(str(path.parent.relative_to(self.root)))  # a symlinked parent may lead out
            if if_match is None and not if_none_match:
                self._replace(path, data)
                return
            with open(self.root / ".rstream-cas.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._check_precondition(key, path, if_match, if_none_match)
                self._replace(path, data)
        except OSError as exc:
            raise _os_error(exc, self.uri(key)) from exc

    def _check_precondition(self, key: str, path: Path, if_match: str | None,
                            if_none_match: bool) -> None:
        if if_none_match and path.exists():
            raise PreconditionFailed(f"{self.uri(key)}: already exists")
        if if_match is not None:
            try:
                current = _etag(path.stat())
            except FileNotFoundError:
                raise PreconditionFailed(f"{self.uri(key)}: no longer exists") from None
            if current != if_match:
                raise PreconditionFailed(f"{self.uri(key)}: changed since it was read")

    @staticmethod
    def _replace(path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def stat(self, key: str) -> ObjectInfo:
        path = self.path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"{self.uri(key)}: no such file") from None
        if not path.is_file():
            raise NotFoundError(f"{self.uri(key)}: not a file")
        return ObjectInfo(key, st.st_size, _etag(st))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        head, _, _ = prefix.rpartition("/")
        start = self.path(head) if head else self.root
        if start.is_dir():
            yield from self._walk(start, prefix)

    def _walk(self, directory: Path, prefix: str) -> Iterator[ObjectInfo]:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith((_TMP_PREFIX, ".rstream-cas")):
                continue
            key = Path(entry.path).relative_to(self.root).as_posix()
            if entry.is_dir(follow_symlinks=False):
                if key.startswith(prefix) or prefix.startswith(key + "/"):
                    yield from self._walk(Path(entry.path), prefix)
            elif key.startswith(prefix) and entry.is_file():
                # A symlink is listed too; reading it enforces the root, so one that leads
                # out gets an error line instead of vanishing from the job.
                st = entry.stat()
                yield ObjectInfo(key, st.st_size, _etag(st))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def _etag(st: os.stat_result) -> str:
    """The local ETag: every write replaces the file (temp file and rename), so a new inode,
    mtime or size marks a new version, without hashing the contents. Listing, stat, reads and
    conditional writes all use this one."""
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _os_error(exc: OSError, uri: str) -> Exception:
    """A full or failing disk may recover; any other OS refusal will not."""
    if exc.errno in (errno.ENOSPC, errno.EIO, errno.EAGAIN, errno.EDQUOT):
        return TransientError(f"{uri}: {exc.strerror}")
    if isinstance(exc, PermissionError):
        return AccessDeniedError(f"{uri}: {exc.strerror}")
    return PermanentError(f"{uri}: {exc.strerror or exc}")


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
                    f"{uri}: outside the storage root {root}: use a path inside the root "
                    "or change RSTREAM_STORAGE_ROOT")
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
            from shared.s3 import S3Backend  # boto3 is slow to import; only S3 users pay

            self._s3[bucket] = S3Backend(bucket, self.settings)
        return self._s3[bucket]

    def read(self, uri: str) -> bytes:
        backend, key = self.resolve(uri)
        return backend.read(key)

    def read_versioned(self, uri: str) -> tuple[bytes, str]:
        backend, key = self.resolve(uri)
        return backend.read_versioned(key)

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

    def list(self, prefix: str) -> Iterator[str]:
        """URIs under ``prefix``, lazily, in the prefix's own style."""
        for info in self.list_info(prefix):
            yield info.key

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        """Like :meth:`list`, with sizes and ETags; ``key`` holds the URI."""
        backend, key = self.resolve(prefix)
        for info in backend.list(key):
            yield ObjectInfo(prefix + info.key[len(key):], info.size, info.etag)


def join(prefix: str, *names: str) -> str:
    """``prefix`` and ``names`` joined with single slashes."""
    parts = [prefix.rstrip("/")] + [n.strip("/") for n in names]
    return "/".join(p for p in parts if p)
