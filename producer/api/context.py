"""What the routes of the HTTP API share: settings, the client, the registry, the tokens, a
thread pool for long submissions, and the error a route raises for an HTTP status."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal

import redis
from fastapi import Depends, Header

from rstream.producer import monitor
from rstream.producer.api.auth import Tokens
from rstream.producer.client import Client
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings

logger = logging.getLogger(__name__)

Scope = Literal["read", "submit", "admin"]
SUBMIT_THREADS = 32  # submissions listing and sending at once; more wait their turn


class ApiError(Exception):
    """An HTTP error with a JSON body: the status, a type and a message."""

    def __init__(self, status: int, kind: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, headers


class ApiContext:
    """What the routes share: settings, the client, the registry, the tokens, a thread pool
    for long submissions."""

    def __init__(self, settings: Settings, client: Client) -> None:
        self.settings, self.client = settings, client
        self.tokens = Tokens.from_settings(settings)
        self.registry = Registry(client.storage, settings.models)
        self.pool = ThreadPoolExecutor(SUBMIT_THREADS, thread_name_prefix="rstream-api-submit")

    def need(self, scope: Scope) -> Any:
        """A route dependency: the bearer token must grant ``scope``."""

        def check(authorization: Annotated[str | None, Header()] = None) -> None:
            granted = self.tokens.scopes(authorization)
            if not granted:
                raise ApiError(401, "Unauthorized", "a bearer token is needed: send "
                               "Authorization: Bearer TOKEN", {"WWW-Authenticate": "Bearer"})
            if scope not in granted:
                raise ApiError(403, "Forbidden", f"this token lacks the {scope} scope")

        return Depends(check)

    def job_view(self, job_id: str) -> dict[str, Any]:
        """A job as the API shows it: counts, state, rate, ETA, models used, notes."""
        state = monitor.status(self.client.jobs, job_id)
        models: Counter[str] = Counter()
        for _, counts in self.client.jobs.chunk_counts(job_id):
            models.update({str(k): int(v) for k, v in counts.get("models", {}).items()})
        return {**state.as_dict(), "models": dict(models),
                "notes": monitor.notes(self.client.jobs, state.job,
                                       self.settings.visibility_timeout),
                "url": f"/v1/jobs/{job_id}", "results_url": f"/v1/jobs/{job_id}/results"}

    def in_background(self, job: str, work: Callable[[], Any]) -> None:
        """Send a recorded job's chunks on a thread of the pool. What fails there is logged
        and recorded on the job (a note and the failed state), so that nobody waits for it."""

        def run() -> None:
            try:
                work()
            except Exception as exc:
                logger.exception("job %s: the submission stopped", job)
                reason = f"the submission stopped: {type(exc).__name__}: {exc}"
                try:
                    self.client.jobs.submission_stopped(job, reason)
                    self.client.jobs.fail(job, reason)
                except redis.RedisError:
                    logger.exception("job %s: could not record why its submission stopped", job)

        self.pool.submit(run)
