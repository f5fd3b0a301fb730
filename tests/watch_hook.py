"""``python -m tests.watch_hook watch ...``: the real ``rstream`` command line, with the watcher
paused at one point so that a test can SIGKILL it exactly there.

``WATCH_HOOK=POINT:N`` pauses the N-th time the watcher reaches POINT, after writing the file
``WATCH_HOOK_MARKER``; it then sleeps until it is killed:

- ``record``: a flush is about to write its chunks to the input record: its objects were found
  (stream entries read: in the consumer group's pending list) and nothing is recorded yet;
- ``send``: the watcher has recorded chunks and is about to send one (its N-th send).

Without ``WATCH_HOOK`` it is ``rstream`` unchanged.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rstream.producer.cli import main
from rstream.producer.watch import windows
from rstream.shared.jobs.inputs import InputRecord


def _pausing(original: Callable[..., Any], nth: int, marker: Path) -> Callable[..., Any]:
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == nth:
            marker.write_text(str(os.getpid()))
            while True:
                time.sleep(1)
        return original(*args, **kwargs)

    return wrapper


def install(hook: str, marker: Path) -> None:
    point, _, nth = hook.partition(":")
    if point == "record":
        InputRecord.write_segment = _pausing(  # type: ignore[method-assign]
            InputRecord.write_segment, int(nth), marker)
    elif point == "send":
        windows.Windows._send = _pausing(  # type: ignore[method-assign]
            windows.Windows._send, int(nth), marker)
    else:
        raise SystemExit(f"WATCH_HOOK={hook!r}: use record:N or send:N")


if __name__ == "__main__":
    if os.environ.get("WATCH_HOOK"):
        install(os.environ["WATCH_HOOK"], Path(os.environ["WATCH_HOOK_MARKER"]))
    sys.exit(main())
