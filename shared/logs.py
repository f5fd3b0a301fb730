"""Logging set-up, called from entry points only (the CLI, worker start-up)."""

from __future__ import annotations

import logging


def configure(level: str) -> None:
    """Log to stderr at ``level`` with timestamps and logger names."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
