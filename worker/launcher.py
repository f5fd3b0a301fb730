"""``rstream worker``: one Celery worker process per GPU (or one on the CPU), supervised.

This parent never imports torch: it counts GPUs with ``nvidia-smi`` and sets
``CUDA_VISIBLE_DEVICES`` for each child before the child's torch starts, so no CUDA context
exists in a process that forks. SIGTERM and SIGINT are passed on to the children, whose warm
shutdown lets running chunks finish (late acks put any unfinished chunk back in the queue).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from types import FrameType

from shared.constants import INFER_QUEUE
from shared.errors import ConfigError
from shared.settings import Settings

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


def worker_command(settings: Settings, queue: str, concurrency: int, name: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queue,
            "--pool", "threads", "-c", str(concurrency), "-n", f"{name}@%h",
            "--loglevel", settings.log_level.upper(), "--without-gossip", "--without-mingle"]


def plan(settings: Settings, gpus: Sequence[str] | None, cpu: bool, *,
         queue: str = INFER_QUEUE, concurrency: int | None = None, one: bool = False
         ) -> list[tuple[list[str], dict[str, str]]]:
    """The (command, environment) of each worker process to start; ``one``: a single process."""
    concurrency = concurrency or settings.concurrency
    devices = [] if cpu else list(gpus if gpus is not None else detect_gpus())
    devices = devices[:1] if one else devices
    base = {**os.environ, **settings.as_env()}
    if not devices:
        env = {**base, "CUDA_VISIBLE_DEVICES": "", "RSTREAM_DEVICE": "cpu"}
        return [(worker_command(settings, queue, concurrency, f"rstream-{queue}-cpu"), env)]
    procs = []
    for gpu in devices:
        # The child sees exactly one GPU, as cuda:0.
        env = {**base, "CUDA_VISIBLE_DEVICES": gpu, "RSTREAM_DEVICE": "cuda"}
        procs.append((worker_command(settings, queue, concurrency, f"rstream-{queue}-gpu{gpu}"),
                      env))
    return procs


def run(settings: Settings, gpus: Sequence[str] | None = None, cpu: bool = False, *,
        queue: str = INFER_QUEUE, concurrency: int | None = None, one: bool = False) -> int:
    """Start the worker processes and wait for them; returns the worst exit status."""
    processes = plan(settings, gpus, cpu, queue=queue, concurrency=concurrency, one=one)
    children = [subprocess.Popen(cmd, env=env) for cmd, env in processes]
    logger.info("started %d worker process(es) on queue %s", len(children), queue)
    return supervise(children)


def run_beat(settings: Settings) -> int:
    """Celery beat with rstream's schedule; its state file lives in the temp directory."""
    schedule = os.path.join(tempfile.gettempdir(), "rstream-celerybeat-schedule")
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "beat",
               "--loglevel", settings.log_level.upper(), "--schedule", schedule]
    return supervise([subprocess.Popen(command, env={**os.environ, **settings.as_env()})])


def supervise(children: list[subprocess.Popen[bytes]]) -> int:
    """Wait for ``children``, passing SIGTERM and SIGINT on; returns the worst exit status."""
    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # Celery's warm shutdown

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs) if codes else 0
