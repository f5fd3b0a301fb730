"""rstream's own worker app (``rstream.worker.app``), plus one remote-control command for the
benchmark.

    celery -A bench.rstream_app worker -Q infer --pool threads -c N

The tasks, settings and engine are exactly ``rstream.worker.app``'s. The additions only measure:
``rstream_bench_stats`` answers the process's batcher counters (images, batches, forward
seconds, queue wait) and the seconds spent in Python's garbage collector, so bench/e2e.py can
tell where the time of a run went (the collector measured under 0.1% of a run here).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

from celery.worker.control import inspect_command

from rstream.worker.app import app, state

__all__ = ["app"]

_gc = {"collections": 0, "seconds": 0.0}
_gc_lock = threading.Lock()
_gc_started: dict[int, float] = {}


def _time_gc(phase: str, _info: dict[str, Any]) -> None:
    # The collector runs on whichever thread triggered it; time it per thread.
    now, ident = time.perf_counter(), threading.get_ident()
    if phase == "start":
        _gc_started[ident] = now
    elif ident in _gc_started:
        with _gc_lock:
            _gc["collections"] += 1
            _gc["seconds"] += now - _gc_started.pop(ident)


gc.callbacks.append(_time_gc)


@inspect_command()
def rstream_bench_stats(_control_state: Any) -> dict[str, Any]:
    """The batcher's counters and GC time of this worker process (builds the engine if needed)."""
    stats: dict[str, Any] = state.context().engine.batcher.stats()  # type: ignore[attr-defined]
    with _gc_lock:
        stats.update(gc_collections=_gc["collections"], gc_s=_gc["seconds"])
    return stats
