"""What the benchmarks start and measure: a private redis-server, moto's S3 server, Celery
worker processes, and CPU and memory counters read from /proc. Nothing here imports torch."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(url: str | None = None) -> Iterator[tuple[str, int | None]]:
    """(URL, pid) of a private ``redis-server`` (no persistence), or of ``url`` as given."""
    if url:
        yield url, None
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install redis-server, "
                         "or pass --redis-url")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="rstream-bench-redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--logfile", str(Path(workdir) / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def moto_server() -> Iterator[str]:
    """The endpoint of moto's S3 server on a free loopback port, run in a thread of this
    process (its CPU counts in this process's counters), with dummy credentials set."""
    from moto.server import ThreadedMotoServer

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
                       "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    os.environ.pop("AWS_PROFILE", None)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def node_name(queue: str) -> str:
    """The Celery node name of the benchmark's worker that consumes ``queue``."""
    return f"{queue}-bench@{socket.gethostname()}"


class Worker:
    """One ``celery -A APP worker`` process (threads pool) with its log in a file."""

    def __init__(self, app: str, queue: str, settings: Settings, log_path: Path,
                 extra_env: dict[str, str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
        env.update(settings.as_env())
        env.update({"PYTHONUNBUFFERED": "1", **extra_env})
        if settings.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # as `rstream worker --cpu` does
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "--pool",
             "threads", "-c", str(settings.concurrency), "-n", node_name(queue),
             "--loglevel", "INFO", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> Worker:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "ready." not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker not ready (exit {self.process.poll()}):\n"
                                 f"{self.log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


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


def machine() -> dict[str, object]:
    """Cores, CPU model and Python of this machine, for the JSON output."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_count": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
