"""Storage targets for the storage contract suite: one per backend and URI style.

The local backend on a temp root, addressed by relative paths, absolute paths and ``file://``
URIs; and S3 on moto's server over HTTP, with a new bucket per test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from tests.settings import make_settings

TARGETS = ["local-relative", "local-absolute", "local-file-uri", "s3"]


@dataclass
class Target:
    """A storage, a base URI inside it, and a fast way to create many empty objects."""

    kind: str  # "local" or "s3"
    storage: Storage
    base: str  # no trailing slash
    bulk_put: Callable[[Iterable[str]], None]  # names under base, empty objects
    where: Callable[[str], str]  # what an error message calls the object ``name``

    def uri(self, name: str) -> str:
        return f"{self.base}/{name}"


def local_target(style: str, tmp_path: Path) -> Target:
    root = tmp_path / "root"
    root.mkdir()
    settings = make_settings(storage_root=str(root))
    base = {"relative": "data", "absolute": str(root / "data"),
            "file-uri": (root / "data").as_uri()}[style]

    def bulk_put(names: Iterable[str]) -> None:
        for name in names:
            path = root / "data" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")

    def where(name: str) -> str:  # the key: messages name no path of this machine
        return f"data/{name}"

    return Target("local", Storage(settings), base, bulk_put, where)


def s3_target(settings: Settings, bucket: str) -> Target:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    base = f"s3://{bucket}/data"

    def bulk_put(names: Iterable[str]) -> None:
        # Seeding only: 2,500 PUTs over HTTP take ~10 s here, so the objects go straight into
        # the server's in-process state; every read and listing under test still goes over HTTP.
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for name in names:
            backend.put_object(bucket, f"data/{name}", b"")

    return Target("s3", Storage(settings), base, bulk_put, lambda name: f"{base}/{name}")
