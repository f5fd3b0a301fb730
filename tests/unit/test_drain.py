"""The drain's deadline: a worker whose running chunks outlast RSTREAM_DRAIN_SECONDS is sent
SIGQUIT (Celery's cold shutdown), once; one that exits first is not. Run in a child process
that stands for the worker, with its own SIGQUIT handler."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import signal, sys, time
from rstream.worker.runtime.drain import DrainDeadline
signal.signal(signal.SIGQUIT, lambda *_: (print("cold shutdown", flush=True), sys.exit(0)))
deadline = DrainDeadline({seconds}).start()
if {cancel}:
    deadline.cancel()
time.sleep(1.5)
print("exited by itself", flush=True)
"""


def _run(seconds: float, cancel: bool) -> str:
    code = CHILD.format(seconds=seconds, cancel=cancel)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def test_running_chunks_past_the_deadline_get_a_cold_shutdown() -> None:
    assert _run(0.2, cancel=False) == "cold shutdown"


def test_a_worker_that_drained_in_time_is_left_alone() -> None:
    assert _run(0.2, cancel=True) == "exited by itself"
