"""Result lines: one JSON object per image, success or error, as written to result parts.

    {"uri": "...", "ok": true,  "top": [{"index": 3, "label": "cat", "prob": 0.91}, ...],
     "model": "digits@20261127T...-3f2a"}
    {"uri": "...", "ok": false, "error": {"type": "ImageError", "message": "..."}, "model": null}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

Line = dict[str, Any]


def ok_line(uri: str, top: list[dict[str, Any]], model: str) -> Line:
    """A success line: the top classes and the model version that produced them."""
    return {"uri": uri, "ok": True, "top": top, "model": model}


def error_line(uri: str, exc: BaseException, model: str | None = None) -> Line:
    """An error line naming the exception class and its message."""
    return {"uri": uri, "ok": False,
            "error": {"type": type(exc).__name__, "message": str(exc)}, "model": model}


def encode(lines: Iterable[Line]) -> bytes:
    """JSONL bytes, one line per result, each ending in a newline."""
    return b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)


def decode(data: bytes) -> Iterator[Line]:
    """The lines of a JSONL part, skipping blank lines."""
    for raw in data.splitlines():
        if raw.strip():
            yield json.loads(raw)
