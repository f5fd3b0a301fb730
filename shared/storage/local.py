"""The local backend: a directory; keys are relative paths that may not resolve outside it.

Writes are atomic (a temp file renamed over the target); conditional writes (``if_match``,
``if_none_match``) hold one lock file per root, so compare-and-set works as it does on S3.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from rstream.shared.errors import (
    AccessDeniedError,
    NotFoundError,
    PermanentError,
    PreconditionFailed,
    TransientError,
)
from rstream.shared.storage.backend import Backend, ObjectInfo, check_size

_TMP_PREFIX = ".rstream-tmp-"
# How long a folder's resolved path is reused. os.path.realpath is pure Python in 3.11, one
# lstat per component: it was a fifth of a worker's CPU on 32x32 images (bench.offline_scale).
# A folder turned into a symlink is noticed within this long; the check-then-open of a path
# already leaves such a window, so this widens it, it does not open a new kind.
_DIR_CACHE_S = 1.0
_DIR_CACHE_SIZE = 4096


class LocalBackend(Backend):
    """A directory; keys are relative paths that may not resolve outside it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.realpath(root))
        self._root_text = str(self.root)
        self._dirs: dict[str, tuple[str, float]] = {}  # folder -> (its realpath, until when)

    def uri(self, key: str) -> str:
        """The key itself, relative to the root: a message never shows this machine's paths
        (the root is ``rstream config``'s RSTREAM_STORAGE_ROOT)."""
        return key or "."

    def path(self, key: str) -> Path:
        """The file behind ``key``; refuses any key that resolves outside the root."""
        if "\x00" in key:
            raise AccessDeniedError(f"{key!r}: a NUL byte is not allowed in a path")
        resolved = self._resolve(os.path.join(self._root_text, key))
        if resolved != self._root_text and not resolved.startswith(self._root_text + os.sep):
            raise AccessDeniedError(
                f"{key}: outside the storage root (RSTREAM_STORAGE_ROOT): use a path inside "
                "the root, or change RSTREAM_STORAGE_ROOT")
        return Path(resolved)

    def _resolve(self, joined: str) -> str:
        """``os.path.realpath(joined)``, with the folder's part cached for ``_DIR_CACHE_S``."""
        folder, name = os.path.split(joined)
        if name in ("", ".", ".."):
            return os.path.realpath(joined)
        now = time.monotonic()
        cached = self._dirs.get(folder)
        if cached is None or cached[1] < now:
            if len(self._dirs) >= _DIR_CACHE_SIZE:
                self._dirs.clear()
            cached = (os.path.realpath(folder), now + _DIR_CACHE_S)
            self._dirs[folder] = cached
        resolved = os.path.join(cached[0], name)
        return os.path.realpath(resolved) if os.path.islink(resolved) else resolved

    def read_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        path = self.path(key)
        try:
            with open(path, "rb") as f:  # the size and ETag of the very file that is read
                st = os.fstat(f.fileno())
                check_size(self.uri(key), st.st_size, max_bytes)
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
                check_size(self.uri(key), len(data), max_bytes)  # it grew while read
                return data, _etag(st)
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

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        head, _, _ = prefix.rpartition("/")
        start = self.path(head) if head else self.root
        if start.is_dir():
            yield from self._walk(start, prefix, start_after or "")

    def _walk(self, directory: Path, prefix: str, after: str) -> Iterator[ObjectInfo]:
        with os.scandir(directory) as it:
            # Key order, as S3 lists: a folder's keys all start with "name/", so it sorts as
            # "name/" does ("a-b" before the folder "a", "a0" after it).
            entries = sorted(it, key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False)
                             else e.name)
        for entry in entries:
            if entry.name.startswith((_TMP_PREFIX, ".rstream-cas")):
                continue
            key = Path(entry.path).relative_to(self.root).as_posix()
            if entry.is_dir(follow_symlinks=False):
                inside = key + "/"
                if after and inside < after and not after.startswith(inside):
                    continue  # every key in it sorts before start_after
                if key.startswith(prefix) or prefix.startswith(inside):
                    yield from self._walk(Path(entry.path), prefix, after)
            elif key.startswith(prefix) and key > after and entry.is_file():
                # A symlink is listed too; reading it enforces the root, so one that leads
                # out gets an error line instead of vanishing from the job.
                st = entry.stat()
                yield ObjectInfo(key, st.st_size, _etag(st))

    def read_lines(self, key: str) -> Iterator[str]:
        path = self.path(key)
        try:
            with open(path, encoding="utf-8") as lines:
                yield from lines
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{self.uri(key)}: no such file") from None
        except UnicodeDecodeError as exc:
            raise PermanentError(f"{self.uri(key)}: not UTF-8 text ({exc.reason} at byte "
                                 f"{exc.start})") from None

    def open_binary(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{self.uri(key)}: no such file") from None

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
