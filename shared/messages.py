"""Task message schemas: plain JSON objects, validated on both ends."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from shared.errors import PermanentError


@dataclass(frozen=True)
class ChunkMessage:
    """One chunk of a job: what the infer task receives.

    ``generation`` is 0 for the first submission and n for the n-th ``rstream retry``; a retry
    chunk carries only the URIs that failed and replaces their lines in the existing part.
    """

    job: str
    chunk: int
    uris: list[str]
    model: str
    results: str
    generation: int = 0

    @property
    def task_id(self) -> str:
        """Deterministic: the same chunk sent twice is the same task."""
        return f"{self.job}:{self.chunk}:{self.generation}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkMessage:
        try:
            message = cls(
                job=str(data["job"]), chunk=int(data["chunk"]),
                uris=[str(u) for u in data["uris"]], model=str(data["model"]),
                results=str(data["results"]), generation=int(data.get("generation", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"malformed chunk message ({exc!r}): {data!r:.200}") from None
        if message.chunk < 0 or not message.uris:
            raise PermanentError(f"malformed chunk message: {data!r:.200}")
        return message
