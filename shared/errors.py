"""The error hierarchy that decides retries.

Everything rstream raises on purpose derives from :class:`RstreamError`. The two branches
decide what happens next: a :class:`PermanentError` is written into the item's result line
and never retried; a :class:`TransientError` is retried with backoff a bounded number of
times and only then becomes a result line.
"""

from __future__ import annotations


class RstreamError(Exception):
    """Raised when rstream fails on purpose; the base of every error below."""


class PermanentError(RstreamError):
    """Raised when retrying cannot help: a corrupt image, a missing key, a refused path."""


class TransientError(RstreamError):
    """Raised when a retry may succeed: throttling, 5xx answers, timeouts, connection resets."""


class ConfigError(PermanentError):
    """Raised when a setting or a command-line value is wrong; the message names the fix."""


class NotFoundError(PermanentError):
    """Raised when a storage key, a model or a job does not exist."""


class AccessDeniedError(PermanentError):
    """Raised when storage refuses a request or a URI lies outside what is allowed."""


class ImageError(PermanentError):
    """Raised when an image cannot be decoded or is refused (corrupt, too large, wrong format)."""


class ModelError(PermanentError):
    """Raised when a model reference cannot be resolved or its checkpoint cannot be loaded."""


class PreconditionFailed(PermanentError):
    """Raised when a conditional write loses: the object changed since it was read, or exists."""


class InvalidMessage(PermanentError):
    """Raised when a task message cannot be decoded or validated: it is dead-lettered with
    this reason, never run and never requeued."""


class InvalidURI(PermanentError):
    """Raised for a URI that cannot name an object (empty, too long, a newline, NUL or other
    control character in it): its image gets this error line, the rest of its chunk goes on."""


class ObjectTooLarge(PermanentError):
    """Raised when an object is larger than RSTREAM_MAX_OBJECT_BYTES; refused before it is read."""


class JobFailed(PermanentError):
    """Raised for the images of a job that failed as a whole (its model cannot be loaded);
    the message is the job's reason."""


class JobConflict(PermanentError):
    """Raised when a job id is submitted again with another source, model, output or chunk
    size than the job has, or retried or cancelled when its state does not allow it."""


class WatchLockLost(PermanentError):
    """Raised when a watcher finds that another watcher holds its watch's lock: it stops."""
