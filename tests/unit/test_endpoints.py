"""The endpoint server: exactly its routes, 404 for any other path, probes as 200 or 503."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from rstream.shared.endpoints import EndpointServer, Response, metrics_route, probe_route


def get(url: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one request; 4xx and 5xx included."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("demo_things_total", "Things.", registry=registry).inc(3)
    return registry


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[EndpointServer]:
    state = {"ready": False}

    def ready() -> tuple[bool, Mapping[str, Any]]:
        return state["ready"], {"why": "ready" if state["ready"] else "warming up"}

    def broken() -> Response:
        raise RuntimeError("a bug in a route")

    server = EndpointServer("127.0.0.1", 0, {
        "/metrics": metrics_route(registry), "/readyz": probe_route(ready),
        "/broken": broken, "/flip": lambda: (state.update(ready=True), Response(200, b""))[1],
    }).start()
    yield server
    server.close()


def test_metrics_are_served_in_prometheus_text_format(server: EndpointServer) -> None:
    status, content_type, body = get(f"{server.url}/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    assert "demo_things_total 3.0" in body.splitlines()


@pytest.mark.parametrize("path", ["/", "/metricsx", "/metrics/", "/healthz", "/favicon.ico",
                                  "/../metrics"])
def test_any_other_path_answers_404_not_the_metrics(server: EndpointServer, path: str) -> None:
    status, _, body = get(f"{server.url}{path}")
    assert status == 404
    assert "demo_things_total" not in body
    assert "/metrics" in body and "/readyz" in body, "the 404 names the paths it serves"


def test_a_query_string_does_not_change_the_route(server: EndpointServer) -> None:
    assert get(f"{server.url}/metrics?format=text")[0] == 200


def test_a_probe_answers_503_then_200_with_its_reason(server: EndpointServer) -> None:
    status, content_type, body = get(f"{server.url}/readyz")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body) == {"ok": False, "why": "warming up"}
    get(f"{server.url}/flip")
    status, _, body = get(f"{server.url}/readyz")
    assert status == 200 and json.loads(body) == {"ok": True, "why": "ready"}


def test_head_answers_the_status_without_a_body(server: EndpointServer) -> None:
    status, _, body = get(f"{server.url}/readyz", method="HEAD")
    assert status == 503 and body == ""


def test_a_route_that_raises_answers_500_and_the_server_serves_on(
        server: EndpointServer) -> None:
    status, _, body = get(f"{server.url}/broken")
    assert status == 500 and "a bug in a route" not in body
    assert get(f"{server.url}/metrics")[0] == 200


def test_closing_frees_the_port(registry: CollectorRegistry) -> None:
    server = EndpointServer("127.0.0.1", 0, {"/metrics": metrics_route(registry)}).start()
    port = server.port
    server.close()
    again = EndpointServer("127.0.0.1", port, {"/metrics": metrics_route(registry)}).start()
    try:
        assert get(f"{again.url}/metrics")[0] == 200
    finally:
        again.close()
