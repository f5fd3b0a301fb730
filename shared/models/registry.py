"""The model registry layout in storage; no torch here, so the producer can read it too.

    {models}/{name}/{version}/weights.safetensors   written first
    {models}/{name}/{version}/meta.json             written last: a version exists once this does
    {models}/{name}/production.json                 {"version": ..., "previous": [...]}
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from rstream.shared.errors import ConfigError, ModelError, NotFoundError, PermanentError
from rstream.shared.models.refs import VERSION_RE
from rstream.shared.names import MODEL_NAME
from rstream.shared.storage import Storage, join

WEIGHTS_NAME = "weights.safetensors"
META_NAME = "meta.json"
PRODUCTION_NAME = "production.json"


def new_version(now: datetime | None = None) -> str:
    """A version id that sorts by creation time: ``20261127T195512123456Z-3f2a``."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(2)


class Registry:
    """Model versions and production pointers under one storage prefix."""

    def __init__(self, storage: Storage, prefix: str) -> None:
        self.storage = storage
        self.prefix = prefix

    def version_uri(self, name: str, version: str, filename: str = "") -> str:
        if not VERSION_RE.fullmatch(version):
            raise ConfigError(f"model version {version!r} is not a version id (like "
                              f"20261127T195512123456Z-3f2a): list them with "
                              f"`rstream models ls {name}`")
        return join(self.prefix, MODEL_NAME.check(name), version, filename)

    def weights_uri(self, name: str, version: str) -> str:
        return self.version_uri(name, version, WEIGHTS_NAME)

    def meta_uri(self, name: str, version: str) -> str:
        return self.version_uri(name, version, META_NAME)

    def pointer_uri(self, name: str) -> str:
        return join(self.prefix, MODEL_NAME.check(name), PRODUCTION_NAME)

    def read_meta(self, name: str, version: str) -> dict[str, Any]:
        uri = self.meta_uri(name, version)
        try:
            data = self.storage.read(uri)
        except NotFoundError:
            raise NotFoundError(
                f"model {name}@{version} does not exist in {self.prefix}: "
                f"list versions with `rstream models ls {name}`") from None
        return _json_object(data, uri, ModelError)

    def update_meta(self, name: str, version: str, **fields: Any) -> dict[str, Any]:
        """Replace top-level ``fields`` of a published version's meta.json (one atomic write)."""
        meta = {**self.read_meta(name, version), **fields}
        self.storage.write(self.meta_uri(name, version), json.dumps(meta, indent=2).encode())
        return meta

    def versions(self, name: str) -> list[str]:
        """Published versions of ``name``, oldest first; a version without meta.json is not one."""
        base = join(self.prefix, MODEL_NAME.check(name)) + "/"
        found = []
        for uri in self.storage.list(base):
            rest = uri[len(base):]
            version, _, filename = rest.partition("/")
            if filename == META_NAME and VERSION_RE.fullmatch(version):
                found.append(version)
        return sorted(found)

    def names(self) -> list[str]:
        """Model names that have a production pointer or at least one version."""
        base = self.prefix.rstrip("/") + "/"
        seen = {uri[len(base):].split("/", 1)[0] for uri in self.storage.list(base)}
        return sorted(n for n in seen if MODEL_NAME.matches(n))

    def read_pointer(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        """The production pointer and its ETag, or (None, None) when there is none yet."""
        uri = self.pointer_uri(name)
        try:
            data, etag = self.storage.read_versioned(uri)
        except NotFoundError:
            return None, None
        pointer = _json_object(data, uri, PermanentError)
        version = pointer.get("version")
        if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
            raise PermanentError(f"{uri} is corrupt: no valid \"version\" (found {version!r}): "
                                 f"promote a version again with `rstream models promote "
                                 f"{name}@VERSION`")
        return pointer, etag

    def production(self, name: str) -> str:
        """The version workers should serve; NotFoundError when none is promoted."""
        pointer, _ = self.read_pointer(name)
        if not pointer:
            raise NotFoundError(
                f"model {name!r} has no production version in {self.prefix}: promote one with "
                f"`rstream models promote {name}@VERSION` or pass NAME@VERSION")
        return str(pointer["version"])

    history_limit = 50  # earlier production versions the pointer keeps, for rollback

    def promote(self, name: str, version: str, reason: str = "",
                current: tuple[dict[str, Any] | None, str | None] | None = None) -> dict[str, Any]:
        """Point production at ``version``, compare-and-set; returns the new pointer.

        ``current`` is the (pointer, ETag) from :meth:`read_pointer` this change is based on
        (default: read it now). When another promoter changed the pointer since, the write
        raises PreconditionFailed and nothing changes.
        """
        self.read_meta(name, version)  # NotFoundError for a version that was never published
        pointer, etag = self.read_pointer(name) if current is None else current
        if pointer and pointer["version"] == version:
            return pointer  # already production: it must not become its own previous version
        previous = list(pointer.get("previous", [])) if pointer else []
        if pointer:
            previous.append(str(pointer["version"]))
        new = {"version": version, "promoted_at": datetime.now(UTC).isoformat(),
               "reason": reason, "previous": previous[-self.history_limit:]}
        new["events"] = self._events(pointer, "promote", new)
        self._write_pointer(name, new, etag)
        return new

    def rollback(self, name: str, reason: str = "rollback",
                 current: tuple[dict[str, Any] | None, str | None] | None = None
                 ) -> dict[str, Any]:
        """Point production back at the version before this one, compare-and-set."""
        pointer, etag = self.read_pointer(name) if current is None else current
        if not pointer or not pointer.get("previous"):
            raise NotFoundError(
                f"model {name!r} has no earlier production version to roll back to: promote one "
                f"with `rstream models promote {name}@VERSION`")
        previous = list(pointer["previous"])
        new = {"version": previous.pop(), "promoted_at": datetime.now(UTC).isoformat(),
               "reason": reason, "previous": previous}
        new["events"] = self._events(pointer, "rollback", new)
        self._write_pointer(name, new, etag)
        return new

    def _events(self, pointer: dict[str, Any] | None, kind: str,
                new: dict[str, Any]) -> list[dict[str, Any]]:
        """The pointer's change log with this change appended: the last ``history_limit``
        promotions and rollbacks, each with its version, time and reason."""
        events = list(pointer.get("events", [])) if pointer else []
        events.append({"kind": kind, "version": new["version"], "at": new["promoted_at"],
                       "reason": new["reason"]})
        return events[-self.history_limit:]

    def _write_pointer(self, name: str, pointer: dict[str, Any], etag: str | None) -> None:
        # A conditional write, not a lock: the storage refuses the loser of a race
        # (PreconditionFailed), on S3 and on the local backend alike.
        data = json.dumps(pointer, indent=2).encode()
        if etag is None:
            self.storage.write(self.pointer_uri(name), data, if_none_match=True)
        else:
            self.storage.write(self.pointer_uri(name), data, if_match=etag)


def _json_object(data: bytes, uri: str, error: type[PermanentError]) -> dict[str, Any]:
    """``data`` as a JSON object, or ``error`` saying that ``uri`` is corrupt."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise error(f"{uri} is corrupt: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise error(f"{uri} is corrupt: not a JSON object")
    return value
