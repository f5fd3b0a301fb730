"""The one rule for a URI, wherever it enters (the HTTP API, a list file, a folder listing,
a watcher's feed, a Redis stream) and wherever it travels (a chunk message, a result line).

A URI that can name an object is non-empty text of at most :data:`MAX_URI_LENGTH`
characters with no control character (newline, NUL, ...). One that cannot is still carried
to a worker, which gives it its own error line (``InvalidURI``), so it never holds up the
other images of its chunk; only text longer than :data:`MAX_CARRIED` is refused where it
enters. A name that is not valid UTF-8 (a local file name in another encoding) is carried
with its odd bytes written as ``\\xNN``.
"""

from __future__ import annotations

import re

MAX_URI_LENGTH = 4096  # longer than any S3 key (1,024 bytes) or Linux path (4,096 bytes)
MAX_CARRIED = 65_536  # a chunk message carries a refused URI up to this, for its error line
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAMES = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL", "\t": "a tab"}


def uri_problem(value: object) -> str | None:
    """Why ``value`` cannot name an object, or None when it can."""
    if not isinstance(value, str):
        return f"a URI is text, not {type(value).__name__}"
    if not value.strip():
        return "an empty URI"
    if len(value) > MAX_URI_LENGTH:
        return f"longer than {MAX_URI_LENGTH} characters ({len(value)})"
    control = _CONTROL.search(value)
    if control:
        char = control.group(0)
        return f"it holds {_NAMES.get(char, f'a control character ({ord(char):#04x})')}"
    return None


def carried(text: str) -> str:
    """``text`` as a chunk message carries it: odd bytes of a non-UTF-8 name as ``\\xNN``.
    ValueError when it is too long to carry at all."""
    if len(text) > MAX_CARRIED:
        raise ValueError(f"longer than {MAX_CARRIED} characters ({len(text)})")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def can_travel(value: object) -> bool:
    """Whether a chunk message may carry ``value`` as a URI (it may still be refused by
    :func:`uri_problem`, with an error line of its own)."""
    if not isinstance(value, str) or not value or len(value) > MAX_CARRIED:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
