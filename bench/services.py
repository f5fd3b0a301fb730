"""What the benchmarks start and measure: the services of tests/services.py (a private
redis-server, moto's S3 server, worker processes) and CPU and memory counters read from
/proc. Nothing here imports torch."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rstream.shared.settings import Settings
from tests.services import RedisServer, ServiceUnavailable, WorkerProcess
from tests.services import moto_server as _moto_server

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def redis_server(url: str | None = None) -> Iterator[tuple[str, int | None]]:
    """(URL, pid) of a private ``redis-server`` (no persistence), or of ``url`` as given."""
    if url:
        yield url, None
        return
    try:
        server = RedisServer().start()
    except ServiceUnavailable as exc:
        raise SystemExit(f"{exc}; or pass --redis-url") from None
    try:
        yield server.url, server.pid
    finally:
        server.stop()


@contextmanager
def moto_server() -> Iterator[str]:
    """The endpoint of moto's S3 server on a free loopback port, run in a thread of this
    process (its CPU counts in this process's counters), with dummy credentials set."""
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
                       "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    os.environ.pop("AWS_PROFILE", None)
    try:
        with _moto_server() as url:
            yield url
    except ServiceUnavailable as exc:
        raise SystemExit(str(exc)) from None


def node_name(queue: str) -> str:
    """The Celery node name of the benchmark's worker that consumes ``queue``."""
    return f"{queue}-bench@{socket.gethostname()}"


def start_worker(app: str, queue: str, settings: Settings, log_path: Path,
                 extra_env: dict[str, str]) -> WorkerProcess:
    """A worker process of ``app`` on ``queue``, named as :func:`node_name` says."""
    return WorkerProcess(settings, log_path, f"{queue}-bench", queue=queue, app=app,
                         concurrency=settings.concurrency, extra_env=extra_env,
                         omp_threads=None)


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (default: this one), all threads."""
    fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def memory_kib(field: str = "VmRSS") -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in KiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_memory() -> None:
    """Reset this process's VmHWM to its current RSS (Linux: ``5 > /proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")
