"""Who may call the HTTP API: bearer tokens with scopes, compared in constant time.

Tokens come from ``RSTREAM_API_TOKENS`` and ``RSTREAM_API_TOKENS_FILE`` (a mounted secret),
each ``TOKEN:SCOPE[+SCOPE]``. Scopes: ``read`` (jobs, results, models), ``submit`` (jobs:
submit, cancel, retry, resume) and ``admin`` (models and training; it includes the others).
Without any token the API serves only 127.0.0.1, with every scope: :func:`check_bind`
refuses to start it anywhere else.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from rstream.shared.errors import ConfigError
from rstream.shared.settings import Settings, parse_tokens

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
ALL_SCOPES = frozenset({"read", "submit", "admin"})


@dataclass(frozen=True)
class Tokens:
    """The configured tokens; empty means no authentication (local use only)."""

    tokens: tuple[tuple[bytes, frozenset[str]], ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Tokens:
        entries = parse_tokens(settings.api_tokens)
        if settings.api_tokens_file:
            path = Path(settings.api_tokens_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"RSTREAM_API_TOKENS_FILE={path}: cannot be read "
                                  f"({exc.strerror}): fix the path or its permissions") from None
            try:
                entries.update(parse_tokens(text))
            except ValueError as exc:
                raise ConfigError(f"RSTREAM_API_TOKENS_FILE={path}: {exc}: one "
                                  "TOKEN:SCOPE[+SCOPE] per line") from None
        return cls(tuple((token.encode(), scopes) for token, scopes in entries.items()))

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def scopes(self, authorization: str | None) -> frozenset[str]:
        """The scopes a request's ``Authorization`` header grants; empty for none."""
        if not self.enabled:
            return ALL_SCOPES
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return frozenset()
        given = presented.strip().encode()
        granted: frozenset[str] = frozenset()
        for token, scopes in self.tokens:  # every token compared, each in constant time
            if hmac.compare_digest(token, given):
                granted = scopes
        return ALL_SCOPES if "admin" in granted else granted


def check_bind(settings: Settings, tokens: Tokens) -> None:
    """Refuse to serve beyond this machine without tokens."""
    if not tokens.enabled and settings.api_host not in LOCAL_HOSTS:
        raise ConfigError(
            f"RSTREAM_API_HOST={settings.api_host} without any token would let anyone on the "
            "network submit jobs: set RSTREAM_API_TOKENS (or RSTREAM_API_TOKENS_FILE), or "
            "serve on 127.0.0.1")
