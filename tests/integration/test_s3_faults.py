"""S3 failures map to our errors after botocore's bounded retries (moto's server over HTTP).

Faults are injected with botocore event hooks on the backend's real client: a
``before-send`` handler that returns a response stands in for the server's answer (the only
way to make moto answer 503), and one that raises stands in for a connection reset. The last
test resets real TCP connections instead, with no hook in the way.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError

from rstream.shared.errors import NotFoundError, TransientError
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from tests.settings import make_settings

SERVICE_UNAVAILABLE = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable"
                       b"</Code><Message>Please reduce your request rate.</Message></Error>")


class _Body:
    """The raw body botocore reads from an injected response."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def _hook(storage: Storage, uri: str, event: str, handler: Any) -> None:
    backend, _ = storage.resolve(uri)
    backend.client.meta.events.register(event, handler)  # type: ignore[attr-defined]


def _attempt_counter(storage: Storage, uri: str, answer: Any = None) -> list[int]:
    """Counts GetObject sends of ``uri``'s client; ``answer(request)`` may inject a fault."""
    attempts = [0]

    def on_send(request: Any, **_: Any) -> Any:
        attempts[0] += 1
        return answer(request, attempts[0]) if answer else None

    _hook(storage, uri, "before-send.s3.GetObject", on_send)
    return attempts


def _answer_503(request: Any, attempt: int) -> AWSResponse:
    return AWSResponse(request.url, 503, {"Content-Type": "application/xml"},
                       _Body(SERVICE_UNAVAILABLE))


def _reset(request: Any, attempt: int) -> None:
    # What botocore raises when urllib3 sees ECONNRESET before a response arrives.
    raise ConnectionClosedError(endpoint_url=request.url)


@pytest.fixture
def stored(s3_settings: Settings, s3_bucket: str) -> tuple[Storage, str]:
    """A storage on the moto server (3 attempts per request) and an object in it."""
    storage = Storage(s3_settings)
    uri = f"s3://{s3_bucket}/images/cat.jpg"
    storage.write(uri, b"meow")
    return storage, uri


def test_503_becomes_transient_after_every_attempt(stored: tuple[Storage, str]) -> None:
    storage, uri = stored
    attempts = _attempt_counter(storage, uri, _answer_503)
    with pytest.raises(TransientError, match=uri):
        storage.read(uri)
    assert attempts == [storage.settings.s3_max_attempts] == [3]


def test_one_503_is_retried_and_the_read_succeeds(stored: tuple[Storage, str]) -> None:
    storage, uri = stored
    attempts = _attempt_counter(
        storage, uri, lambda req, n: _answer_503(req, n) if n == 1 else None)
    assert storage.read(uri) == b"meow"
    assert attempts == [2]


def test_connection_reset_becomes_transient_after_every_attempt(
        stored: tuple[Storage, str]) -> None:
    storage, uri = stored
    attempts = _attempt_counter(storage, uri, _reset)
    with pytest.raises(TransientError, match=uri):
        storage.read(uri)
    assert attempts == [3]


def test_missing_key_becomes_not_found_after_one_attempt(stored: tuple[Storage, str]) -> None:
    storage, uri = stored
    missing = uri.replace("cat.jpg", "dog.jpg")
    attempts = _attempt_counter(storage, missing)
    with pytest.raises(NotFoundError, match=missing):
        storage.read(missing)
    assert attempts == [1]


@pytest.fixture
def resetting_server() -> Iterator[str]:
    """The URL of a TCP server that resets every connection it accepts (RST, not FIN)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # so that the thread sees ``stop`` soon
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.recv(65536)  # wait for the request, then reset instead of answering
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_real_connection_resets_become_transient_after_every_attempt(
        resetting_server: str, aws_environment: None, tmp_path: Any) -> None:
    storage = Storage(make_settings(
        storage_root=str(tmp_path), s3_endpoint_url=resetting_server, s3_max_attempts=3))
    uri = "s3://bucket/key.jpg"
    attempts = _attempt_counter(storage, uri)
    with pytest.raises(TransientError, match=uri):
        storage.read(uri)
    assert attempts == [3]
