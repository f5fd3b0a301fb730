"""The small HTTP server of a process's operational endpoints: ``/metrics`` (Prometheus),
``/healthz`` and ``/readyz``. Any other path answers 404, and only GET and HEAD are served.

prometheus_client's own ``start_http_server`` answers every path with the metrics; this one
serves exactly the routes it is given, each a function that returns a :class:`Response`. The
worker processes (``worker/tasks.py``) and ``rstream exporter`` (``producer/exporter.py``) use
it; a route that raises answers 500 and is logged, and the server serves on.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Response:
    """What a route answers."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Response]
Check = Callable[[], tuple[bool, Mapping[str, Any]]]


def metrics_route(registry: CollectorRegistry = REGISTRY) -> Route:
    """``/metrics``: the registry in Prometheus's text format."""
    return lambda: Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)


def probe_route(check: Check) -> Route:
    """A probe: 200 when ``check`` says ok, 503 when not, with its details as JSON."""

    def route() -> Response:
        ok, details = check()
        body = json.dumps({"ok": ok, **details}, default=str).encode() + b"\n"
        return Response(200 if ok else 503, body, "application/json")

    return route


class EndpointServer:
    """Serves ``routes`` on ``host:port`` from a daemon thread until :meth:`close`."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        handler = type("Handler", (_Handler,), {"routes": dict(routes)})
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), handler)
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="rstream-endpoints", daemon=True)

    def start(self) -> EndpointServer:
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, Route] = {}

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, *, send_body: bool) -> None:
        route = self.routes.get(self.path.partition("?")[0])
        if route is None:
            known = ", ".join(sorted(self.routes))
            response = Response(404, f"not found: this server answers {known}\n".encode())
        else:
            try:
                response = route()
            except Exception:  # a broken route must not end the server
                logger.exception("the %s endpoint failed", self.path)
                response = Response(500, b"internal error: see the process's log\n")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        # One line per scrape or probe would drown the worker's own lines.
        logger.debug("%s %s", self.address_string(), format % args)
