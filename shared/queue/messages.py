"""Task message schemas: plain JSON objects, validated on both ends.

A worker trusts nothing in a message: every field is checked again here (types, ranges,
identifiers matched whole), and the chunk is then checked against its job record (see
``worker/serving/chunks.py``) before anything runs. What fails is an :class:`InvalidMessage`, which
the worker dead-letters instead of running or requeueing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any

from rstream.shared.errors import ConfigError, InvalidMessage, RstreamError
from rstream.shared.models import refs
from rstream.shared.names import JOB_ID
from rstream.shared.tables.reader import MAX_KEEP, check_value
from rstream.shared.uris import can_travel

MAX_URIS = 10_000  # RSTREAM_CHUNK_SIZE's upper bound
MAX_CHUNK = 10_000_000
MAX_GENERATION = 10_000
MAX_COLUMNS_BYTES = 4 * 1024 * 1024  # a chunk's kept columns, as JSON
_FIELDS = frozenset({"job", "chunk", "uris", "model", "results", "generation", "columns"})
_OPTIONAL = frozenset({"generation", "columns"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TASK_ID_RE = re.compile(r"(?P<job>[^:]+):(?P<chunk>[0-9]{1,8}):(?P<generation>[0-9]{1,5})")


def task_id(job: str, chunk: int, generation: int) -> str:
    """The task id of a chunk: deterministic, so the same chunk sent twice is the same task."""
    return f"{job}:{chunk}:{generation}"


@dataclass(frozen=True)
class ChunkMessage:
    """One chunk of a job: what the infer task receives.

    ``generation`` is 0 for the first submission and n for the n-th ``rstream retry``; a retry
    chunk carries only the URIs that failed and replaces their lines in the existing part.
    ``columns`` (a table source's): each URI's kept columns, in the URIs' order, written into
    its result line; None when the source keeps none (then the field is not sent).
    """

    job: str
    chunk: int
    uris: list[str]
    model: str
    results: str
    generation: int = 0
    columns: list[dict[str, Any]] | None = None

    @property
    def task_id(self) -> str:
        """See :func:`task_id`."""
        return task_id(self.job, self.chunk, self.generation)

    @staticmethod
    def parse_task_id(task_id: object) -> tuple[str, int, int] | None:
        """(job, chunk, generation) of a :attr:`task_id`; None for anything else."""
        match = _TASK_ID_RE.fullmatch(task_id) if isinstance(task_id, str) else None
        if match is None or not JOB_ID.matches(match["job"]):
            return None
        return match["job"], int(match["chunk"]), int(match["generation"])

    def to_dict(self) -> dict[str, Any]:
        """The message as a JSON object (without ``columns`` when it has none); its lists are
        the message's own, not copies (``dataclasses.asdict`` deep-copies every URI, a third
        of a fast producer's time)."""
        data = {field.name: getattr(self, field.name) for field in fields(self)}
        if self.columns is None:
            del data["columns"]
        return data

    def summary(self) -> str:
        """What Flower and the worker's log show of the message (Celery's ``kwargsrepr``):
        every field but the URIs and their kept columns, which are counted."""
        shown = {**self.to_dict(), "uris": f"<{len(self.uris)} URIs>"}
        if self.columns is not None:
            shown["columns"] = f"<{len(self.columns)} rows>"
        return repr({"message": shown})

    @classmethod
    def from_dict(cls, data: object) -> ChunkMessage:
        """The message, checked field by field; InvalidMessage naming the first problem."""
        if not isinstance(data, dict):
            raise InvalidMessage(f"a chunk message is a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - _FIELDS)
        missing = sorted(_FIELDS - _OPTIONAL - set(data))
        if unknown or missing:
            raise InvalidMessage(f"chunk message fields: missing {missing}, unknown {unknown}")
        try:
            message = cls(job=JOB_ID.check(_text(data["job"], "job")),
                          chunk=_integer(data["chunk"], "chunk", MAX_CHUNK),
                          uris=_uris(data["uris"]),
                          model=_model(data["model"]),
                          results=_text(data["results"], "results"),
                          generation=_integer(data.get("generation", 0), "generation",
                                              MAX_GENERATION),
                          columns=_columns(data.get("columns"), len(data["uris"])))
        except InvalidMessage:
            raise
        except (ConfigError, RstreamError) as exc:
            raise InvalidMessage(f"chunk message: {exc}") from None
        return message


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value or _CONTROL.search(value):
        raise InvalidMessage(f"chunk message field {name} is not a plain non-empty string")
    return value


def _model(value: object) -> str:
    text = _text(value, "model")
    refs.parse(text)  # ModelError with the reason
    return text


def _integer(value: object, name: str, high: int) -> int:
    # bool is an int in Python; JSON's true is not a chunk number
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise InvalidMessage(f"chunk message field {name} is not an integer from 0 to {high}")
    return value


def _uris(value: object) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_URIS:
        raise InvalidMessage(f"chunk message field uris is not a list of 1 to {MAX_URIS} URIs")
    for uri in value:
        if not can_travel(uri):  # a URI that cannot name an object still gets its error line
            raise InvalidMessage(f"chunk message field uris holds a value that cannot travel "
                                 f"as a URI: {str(uri)[:80]!r}")
    return list(value)


def _columns(value: object, count: int) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != count:
        raise InvalidMessage("chunk message field columns is not a list with one entry per URI")
    for n, kept in enumerate(value):
        if not isinstance(kept, dict) or len(kept) > MAX_KEEP or not all(
                isinstance(name, str) and name for name in kept):
            raise InvalidMessage(f"chunk message field columns[{n}] is not an object of at "
                                 f"most {MAX_KEEP} named columns")
        for name, cell in kept.items():
            try:
                check_value(cell, f"columns[{n}][{name[:40]!r}]")
            except RstreamError as exc:
                raise InvalidMessage(f"chunk message field {exc}") from None
    if len(json.dumps(value)) > MAX_COLUMNS_BYTES:
        raise InvalidMessage(f"chunk message field columns is above {MAX_COLUMNS_BYTES} bytes")
    return value
