"""``rstream worker``: one Celery worker process per GPU (or one on the CPU), supervised.

This parent never imports torch: it counts GPUs with ``nvidia-smi`` and sets
``CUDA_VISIBLE_DEVICES`` for each child before the child's torch starts, so no CUDA context
exists in a process that forks. SIGTERM and SIGINT are passed on to the children, whose warm
shutdown lets running chunks finish (late acks put any unfinished chunk back in the queue).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from types import FrameType

from rstream.shared.constants import INFER_QUEUE
from rstream.shared.errors import ConfigError
from rstream.shared.settings import Settings

logger = logging.getLogger(__name__)


def detect_gpus() -> list[str]:
    """GPU indices from ``nvidia-smi -L``, without touching CUDA here; [] when there is none."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def parse_gpus(text: str) -> list[str]:
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise ConfigError(f"--gpus {text!r} is invalid: use GPU indices such as 0,1")
    return gpus


def worker_command(settings: Settings, queue: str, concurrency: int, name: str, *,
                   app: str = "rstream.worker.app") -> list[str]:
    """The command line of one worker process: Celery's worker on ``app`` with threads."""
    return [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue,
            "--pool", "threads", "-c", str(concurrency), "-n", f"{name}@%h",
            "--loglevel", settings.log_level.upper(), "--without-gossip", "--without-mingle"]


def gpu_chunks_in_flight(settings: Settings) -> int:
    """Chunk tasks a GPU worker process runs at once: enough chunks of
    ``RSTREAM_CHUNK_SIZE`` images for two device batches of ``RSTREAM_MAX_BATCH``, so the
    batcher fills one batch while the other runs (at least ``RSTREAM_CONCURRENCY``).
    With the defaults (64 and 64) that is 2, as on the CPU; ``RSTREAM_MAX_BATCH=256`` gives 8."""
    return max(settings.concurrency, math.ceil(2 * settings.max_batch / settings.chunk_size))


def plan(settings: Settings, gpus: Sequence[str] | None, cpu: bool, *,
         queue: str = INFER_QUEUE, concurrency: int | None = None, one: bool = False,
         per_gpu: int = 1) -> list[tuple[list[str], dict[str, str]]]:
    """The (command, environment) of each worker process to start; ``one``: a single process.

    ``per_gpu`` > 1 starts several processes on each GPU: image decoding runs in Python
    threads, so one process decodes on about one core's worth of the GIL, far below what a
    GPU can score; more processes decode in parallel, each with its own copy of the model.
    """
    devices = [] if cpu else list(gpus if gpus is not None else detect_gpus())
    if concurrency is None and devices and queue == INFER_QUEUE:
        concurrency = gpu_chunks_in_flight(settings)
    concurrency = concurrency or settings.concurrency
    devices = devices[:1] if one else devices
    base = {**os.environ, **settings.as_env()}
    if not devices:
        env = {**base, "CUDA_VISIBLE_DEVICES": "", "RSTREAM_DEVICE": "cpu"}
        return [(worker_command(settings, queue, concurrency, f"rstream-{queue}-cpu"), env)]
    procs = []
    # Processes sharing the machine split its cores for torch's CPU threads (decode work on a
    # GPU worker): on an H100 machine, 4 processes per GPU with 16 threads each fell from 700
    # to under 40 images/s apiece; with 4 threads each they kept about 420.
    total = len(devices) * (1 if one else per_gpu)
    threads = str(max(1, (os.cpu_count() or 1) // total))
    for gpu in devices:
        # The child sees exactly one GPU, as cuda:0.
        env = {**base, "CUDA_VISIBLE_DEVICES": gpu, "RSTREAM_DEVICE": "cuda"}
        if total > 1:
            env.setdefault("OMP_NUM_THREADS", threads)
        for n in range(1 if one else per_gpu):
            name = f"rstream-{queue}-gpu{gpu}" + (f"-{n}" if per_gpu > 1 else "")
            procs.append((worker_command(settings, queue, concurrency, name), dict(env)))
    if settings.metrics_port:  # one /metrics port per process: base, base + 1, ...
        for i, (_, env) in enumerate(procs):
            env["RSTREAM_METRICS_PORT"] = str(settings.metrics_port + i)
    return procs


def run(settings: Settings, gpus: Sequence[str] | None = None, cpu: bool = False, *,
        queue: str = INFER_QUEUE, concurrency: int | None = None, one: bool = False,
        per_gpu: int = 1) -> int:
    """Start the worker processes and supervise them until SIGTERM; the worst exit status."""
    processes = plan(settings, gpus, cpu, queue=queue, concurrency=concurrency, one=one,
                     per_gpu=per_gpu)
    logger.info("starting %d worker process(es) on queue %s", len(processes), queue)
    return Supervisor(processes).run()


def run_beat(settings: Settings) -> int:
    """Celery beat with rstream's schedule; its state file lives in the temp directory."""
    schedule = os.path.join(tempfile.gettempdir(), "rstream-celerybeat-schedule")
    command = [sys.executable, "-m", "celery", "-A", "rstream.worker.app", "beat",
               "--loglevel", settings.log_level.upper(), "--schedule", schedule]
    return Supervisor([(command, {**os.environ, **settings.as_env()})]).run()


class Supervisor:
    """Runs processes, restarts any that dies, and passes SIGTERM and SIGINT on.

    A worker can die without being asked: an out-of-memory kill, or Celery giving up after a
    broker connection loss (a known kombu failure mode). Its chunks are redelivered after the
    visibility timeout either way; restarting it keeps the device serving without an
    operator. The pause before a restart doubles with each death, up to ``MAX_BACKOFF_S``, and
    starts again at 1 s once the process has run for ``HEALTHY_AFTER_S``. SIGTERM or SIGINT at
    any moment, a restart pause included, ends the pause, asks every running process for a
    warm shutdown, and :meth:`run` returns the worst of their exit statuses (0 when they all
    shut down cleanly); a process that was already dead does not count.
    """

    MAX_BACKOFF_S = 30.0
    FIRST_BACKOFF_S = 1.0
    HEALTHY_AFTER_S = 60.0

    def __init__(self, processes: Sequence[tuple[list[str], dict[str, str]]]) -> None:
        self.processes = list(processes)
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = threading.Event()
        self._signalled: list[subprocess.Popen[bytes]] = []

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.children = [subprocess.Popen(cmd, env=env) for cmd, env in self.processes]
        started = [time.monotonic()] * len(self.children)
        backoff = [self.FIRST_BACKOFF_S] * len(self.children)
        while not self.stopping.is_set():
            for i, child in enumerate(self.children):
                code = child.poll()
                if code is None or self.stopping.is_set():
                    continue
                if time.monotonic() - started[i] >= self.HEALTHY_AFTER_S:
                    backoff[i] = self.FIRST_BACKOFF_S  # it ran well: a fresh start
                logger.error("worker process %d exited with %s; restarting it in %.1f s",
                             child.pid, code, backoff[i])
                if self.stopping.wait(backoff[i]):
                    break
                backoff[i] = min(self.MAX_BACKOFF_S, backoff[i] * 2)
                cmd, env = self.processes[i]
                self.children[i] = subprocess.Popen(cmd, env=env)
                started[i] = time.monotonic()
            self.stopping.wait(0.5)
        self._terminate_running()  # one restarted just as the signal came, if any
        codes = [child.wait() for child in self._signalled]
        return max(codes, key=abs) if codes else 0

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping.set()
        self._terminate_running()

    def _terminate_running(self) -> None:
        for child in self.children:
            if child.poll() is None and child not in self._signalled:
                child.send_signal(signal.SIGTERM)  # Celery's warm shutdown
                self._signalled.append(child)
