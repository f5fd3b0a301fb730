"""How the HTTP API answers errors: JSON bodies with a type and a message, 4xx for anything
a caller sends, 503 while Redis is away; never a 500 for a caller's mistake."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rstream.producer.api.context import ApiError
from rstream.shared.connections import redis_problem
from rstream.shared.errors import (
    AccessDeniedError,
    ConfigError,
    JobConflict,
    NotFoundError,
    RstreamError,
)
from rstream.shared.settings import Settings

_STATUS = {NotFoundError: 404, AccessDeniedError: 403, JobConflict: 409, ConfigError: 400}


def add_error_handlers(app: FastAPI) -> None:
    """Install the handlers that turn every error into its JSON answer."""
    def body(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": {"type": kind, "message": message, **extra}},
                            status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        response = body(exc.status, exc.kind, str(exc))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RstreamError)
    async def rstream_error(_: Request, exc: RstreamError) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
        return body(status, type(exc).__name__, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(error.get("type") == "json_invalid" for error in errors):
            return body(400, "MalformedJSON", "the request body is not valid JSON")
        fields = [{"field": ".".join(str(p) for p in error.get("loc", ()) if p != "body"),
                   "message": error.get("msg", "")} for error in errors]
        first = fields[0] if fields else {"field": "", "message": "invalid"}
        return body(422, "ValidationError", f"{first['field'] or 'body'}: {first['message']}",
                    fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own: an unknown route (404), a wrong method (405), a body that cannot
        # be parsed at all (400: not UTF-8, nested too deep). The same shape as the rest.
        kind = {400: "MalformedBody", 404: "NotFound", 405: "MethodNotAllowed"}.get(
            exc.status_code, "HTTPError")
        message = "the request body cannot be parsed (not UTF-8 JSON, or nested too deep)" \
            if exc.status_code == 400 else str(exc.detail)
        response = body(exc.status_code, kind, message)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        settings: Settings = request.app.state.settings
        return body(503, "RedisUnavailable", str(redis_problem(settings.redis_url, exc)))
