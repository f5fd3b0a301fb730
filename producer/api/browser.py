"""What a browser may do with the API.

- Every answer carries headers that keep other pages from framing it or the browser from
  guessing types: a Content-Security-Policy with no third-party origin (the dashboard's one
  inline script and style are allowed by their hashes), ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``.
- Without tokens the API serves this machine only, so any web page open in a browser here
  could otherwise drive it: it answers only ``Host`` values of its own address (no DNS
  rebinding), and a request that changes state needs a JSON body type (a plain form post
  cannot send one) and, when the browser sends an ``Origin``, the API's own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from rstream.producer.api.auth import LOCAL_HOSTS

SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
ASGIApp = Callable[..., Awaitable[None]]


def content_security_policy(page: str) -> str:
    """The policy for the API and ``page`` (the dashboard): its inline blocks by hash."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                        for b in blocks)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


class BrowserGuard:
    """ASGI middleware: the headers on every answer; without tokens, the Host and Origin
    rules of the module docstring."""

    def __init__(self, app: ASGIApp, *, csp: str, local_only: bool, host: str,
                 port: int) -> None:
        self.app, self.local_only = app, local_only
        self.headers = [(b"content-security-policy", csp.encode()),
                        (b"x-content-type-options", b"nosniff"),
                        (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]
        names = {f"[{n}]" if ":" in n else n for n in {host, *LOCAL_HOSTS}}
        self.hosts = {f"{n}:{port}".encode() for n in names}
        self.origins = {b"http://" + h for h in self.hosts}
        if port == 80:  # a browser leaves the default port out
            self.hosts |= {n.encode() for n in names}
            self.origins |= {f"http://{n}".encode() for n in names}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        refused = self._refused(scope) if self.local_only else None
        if refused is not None:
            await _answer(with_headers, *refused)
            return
        await self.app(scope, receive, with_headers)

    def _refused(self, scope: MutableMapping[str, Any]) -> tuple[int, str, str] | None:
        headers = dict(scope.get("headers", ()))
        if headers.get(b"host", b"") not in self.hosts:
            return (421, "HostRefused", "this API serves this machine only (no tokens are "
                    "set): use the address it listens on, or set RSTREAM_API_TOKENS")
        if scope["method"].encode() in SAFE_METHODS:
            return None
        origin = headers.get(b"origin")
        if origin is not None and origin not in self.origins:
            return (403, "CrossOrigin", "a request from another web page may not change "
                    "anything here (no tokens are set)")
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if kind != b"application/json":
            return (415, "JSONRequired", "send Content-Type: application/json with a request "
                    "that changes something (no tokens are set)")
        return None


async def _answer(send: Callable[[MutableMapping[str, Any]], Awaitable[None]], status: int,
                  kind: str, message: str) -> None:
    """An error in the API's one shape, sent straight from the middleware."""
    payload = json.dumps({"error": {"type": kind, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
