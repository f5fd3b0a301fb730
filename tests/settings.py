"""Settings for tests: built from an EMPTY environment plus overrides, so that no test depends
on the developer's ``RSTREAM_*`` variables."""

from __future__ import annotations

from typing import Any

from rstream.shared.settings import Settings


def make_settings(**overrides: Any) -> Settings:
    """Settings from an empty environment plus ``overrides`` (field names, typed values)."""
    return Settings.from_env({}, **overrides)
