"""``rstream api``: the queue submission API over HTTP (FastAPI on uvicorn), and a dashboard.

Versioned under ``/v1``; the OpenAPI schema at ``/openapi.json``. Bodies are validated by pydantic,
errors are JSON with the field or the reason named (``errors.py``), never a 500 for anything a
caller sends. The routes live with their resource: ``jobs.py``, ``images/`` (gallery,
thumbnails), ``models.py``, ``health.py``. No
torch on this side.
"""

from __future__ import annotations

import dataclasses
import logging
from importlib import resources

from fastapi import FastAPI

from rstream.producer.api import health, jobs, models
from rstream.producer.api.auth import check_bind
from rstream.producer.api.body_limit import BodyLimit
from rstream.producer.api.browser import BrowserGuard, content_security_policy
from rstream.producer.api.context import ApiContext
from rstream.producer.api.errors import add_error_handlers
from rstream.producer.api.images import routes as images
from rstream.producer.client import Client
from rstream.shared.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings, client: Client | None = None) -> FastAPI:
    """The API for ``settings``; ConfigError when it must not start (see ``auth.py``)."""
    # Redis may come later; until then every route answers 503 at once.
    ctx = ApiContext(settings, client or Client(settings, check=False, fail_fast=True))
    check_bind(settings, ctx.tokens)
    # No /docs or /redoc: FastAPI serves them with scripts from a CDN, on the origin whose
    # storage keeps the dashboard's token. The schema stays at /openapi.json.
    app = FastAPI(title="rstream", version="1", docs_url=None, redoc_url=None,
                  description="Submit images for scoring, follow jobs, read results.")
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    page = resources.files("rstream.producer.api").joinpath("dashboard.html").read_text("utf-8")
    app.add_middleware(BrowserGuard, csp=content_security_policy(page),
                       local_only=not ctx.tokens.enabled, host=settings.api_host,
                       port=settings.api_port)
    add_error_handlers(app)
    health.add_routes(app, ctx)
    jobs.add_routes(app, ctx)
    images.add_routes(app, ctx)
    models.add_routes(app, ctx)
    return app


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> int:
    """``rstream api``: serve the API with uvicorn until SIGTERM or Ctrl-C."""
    import uvicorn

    if host:
        settings = dataclasses.replace(settings, api_host=host)
    if port:
        settings = dataclasses.replace(settings, api_port=port)
    app = create_app(settings)
    logger.info("rstream api on http://%s:%d/ (OpenAPI schema at /openapi.json)",
                settings.api_host, settings.api_port)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port,
                log_level=settings.log_level, access_log=False)
    return 0
