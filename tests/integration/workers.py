"""Real ``celery worker`` processes for integration tests, started as subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0


class WorkerProcess:
    """One ``celery -A worker.app worker`` process with its log in a file.

    ``supervised=True`` starts ``rstream worker --cpu`` instead: the launcher that restarts a
    worker process that dies.
    """

    def __init__(self, settings: Settings, log_path: Path, name: str, *, queue: str = "infer",
                 concurrency: int = 2, extra_env: dict[str, str] | None = None,
                 supervised: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
        env.update(settings.as_env())
        env.update({"CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1",
                    "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2")})
        env.update(extra_env or {})
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queue,
                   "--pool", "threads", "-c", str(concurrency), "-n", f"{name}@%h",
                   "--loglevel", "INFO", "--without-gossip", "--without-mingle",
                   "--without-heartbeat"]
        if supervised:
            env["RSTREAM_CONCURRENCY"] = str(concurrency)
            command = [sys.executable, "-m", "producer.cli", "worker", "--cpu"]
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> WorkerProcess:
        deadline = time.monotonic() + timeout_s
        while "ready." not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready after {timeout_s} s:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-work, as on an OOM kill or a lost machine."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (Celery's warm shutdown), then SIGKILL after ``timeout_s``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)
