"""What every command group of the ``rstream`` command line shares: the handler type and the
argument types that say why a value is refused."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from rstream.shared.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]
Commands = argparse._SubParsersAction  # what ``add_subparsers`` returns


def positive(text: str) -> int:
    """argparse type: an integer >= 1, with the reason when it is not."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def seconds(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0")
    return value
