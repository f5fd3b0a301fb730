"""Logging set-up: the one place that configures it, called from entry points only (the CLI's
``main``, and the worker's Celery ``setup_logging`` signal in ``worker/app.py``).

Two formats, ``RSTREAM_LOG_FORMAT``: ``text`` (the default, one readable line per record) and
``json`` (one JSON object per line, for log collectors). A JSON line carries the fields given
with ``extra=`` on the call (chunk lines carry ``job``, ``chunk`` and ``model``; see
:func:`chunk_fields`) and the process's context (a worker's ``worker`` name, set once with
:func:`set_context`).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord has; anything else on a record came from ``extra=`` or the context.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_context: dict[str, Any] = {}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the
    process's context, the record's extra fields, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context,
        }
        entry.update((key, value) for key, value in vars(record).items()
                     if key not in _STANDARD and not key.startswith("_"))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _Handler(logging.StreamHandler):
    """rstream's own handler, so that configuring again replaces it instead of adding one."""


def configure(level: str, fmt: str = "text", *, force: bool = False,
              stream: TextIO | None = None) -> None:
    """Log to ``stream`` (stderr) at ``level`` in ``fmt`` (``text`` or ``json``).

    Like ``logging.basicConfig``, this leaves a root logger that already has another handler
    alone (a test runner's, say), unless ``force``: the worker takes the root logger over, as
    Celery itself would.
    """
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not isinstance(h, _Handler)]
    if foreign and not force:
        return
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.handlers = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings too, in the same format


def set_context(**fields: Any) -> None:
    """Fields that every JSON line of this process carries from now on (e.g. ``worker``)."""
    _context.update(fields)


def chunk_fields(job: str, chunk: int, model: str, **more: Any) -> Mapping[str, Any]:
    """The ``extra=`` of a chunk's log lines: which job, chunk and model it is about."""
    return {"job": job, "chunk": chunk, "model": model, **more}
