"""The real services that tests and benchmarks start: a private ``redis-server``, moto's S3
server over HTTP, and rstream worker processes. One home for both ``tests/`` and ``bench/``.

Nothing here imports torch. A service that cannot start raises :class:`ServiceUnavailable`
with the reason; the test fixtures turn it into a skip (or a failure under ``CI=true``), the
benchmarks into an exit with the message.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from prometheus_client.parser import text_string_to_metric_families

from rstream.shared.constants import INFER_QUEUE
from rstream.shared.settings import Settings
from rstream.worker.runtime.launcher import worker_command

REPO = Path(__file__).resolve().parents[1]
REDIS_START_TIMEOUT_S = 10.0
WORKER_READY_TIMEOUT_S = 120.0


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """The Prometheus samples at ``url`` (a /metrics endpoint), by name and label set."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when it is absent (a counter not incremented yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def http_get(url: str, timeout_s: float = 10.0) -> tuple[int, Any]:
    """(status, body) of a GET, 4xx and 5xx included; a JSON body comes back parsed."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status, raw, kind = response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers["Content-Type"]
    return status, json.loads(raw) if kind == "application/json" else raw.decode()


class ServiceUnavailable(Exception):
    """Raised when a service cannot start here (not installed, or it exited); says why."""


def in_ci() -> bool:
    """True when the environment says this is CI, where missing services are failures."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def service_unavailable(reason: str) -> NoReturn:
    """Skip the current test, or fail it under ``CI=true``: CI must never pass by skipping."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service is a failure, not a skip)",
                    pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(port: int, password: str | None = None) -> bool:
    """Whether a Redis on 127.0.0.1:``port`` answers PING (after AUTH with ``password``)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A private ``redis-server`` on a free loopback port, in a directory of its own.

    Persistence is off, unless ``durable``: then the append-only file is fsynced on every
    write (as docker-compose.yml's Redis keeps one), so :meth:`kill` and :meth:`start` again
    lose nothing that was acknowledged. The developer's Redis on 6379 is never touched.
    """

    def __init__(self, workdir: Path | None = None, *, durable: bool = False,
                 password: str | None = None, args: list[str] | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailable("redis-server is not installed: install it (apt-get install "
                                     "redis-server) to run what needs Redis")
        self.binary, self.durable, self.port = binary, durable, free_port()
        self.password, self.args = password, list(args or [])
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="rstream-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> RedisServer:
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.durable
                       else ["--appendonly", "no"])
        if self.password:
            persistence += ["--requirepass", self.password]
        log = self.workdir / "redis.log"
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *persistence, "--dir", str(self.workdir), "--logfile", str(log), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while not redis_answers(self.port, self.password):
            if self.process.poll() is not None or time.monotonic() > deadline:
                detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise ServiceUnavailable(f"redis-server did not start on port {self.port} "
                                         f"(exit code {self.process.poll()}): {detail}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash: only what the append-only file holds survives."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; the directory goes too when it is our own."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SentinelGroup:
    """A Redis primary, one replica and three Sentinels (``redis-server --sentinel``), each on
    a free loopback port in ``workdir``: :attr:`url` is the ``redis+sentinel://`` URL of the
    group, :meth:`kill_primary` a crash of the primary, :meth:`wait_failover` the promotion.

    Sentinel's settings: ``down_after_ms`` before a primary is thought down, quorum 2,
    ``failover_timeout_ms`` (also how soon a failed failover is tried again).
    """

    MASTER = "rstream-test"

    def __init__(self, workdir: Path, *, down_after_ms: int = 2000,
                 failover_timeout_ms: int = 4000) -> None:
        self.workdir, self.down_after_ms = workdir, down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        (workdir / "primary").mkdir(parents=True)
        (workdir / "replica").mkdir()
        self.primary = RedisServer(workdir / "primary")
        self.replica: RedisServer | None = None
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.sentinel_ports = [free_port() for _ in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.MASTER}/0"

    def start(self) -> SentinelGroup:
        self.primary.start()
        self.replica = RedisServer(self.workdir / "replica", args=[
            "--replicaof", "127.0.0.1", str(self.primary.port)]).start()
        replica = self.replica.port
        _wait(lambda: (_ask(replica, lambda r: r.info("replication")) or {}).get(
            "master_link_status") == "up", "the replica did not sync with the primary")
        for index, port in enumerate(self.sentinel_ports):
            self.sentinels.append(self._sentinel(index, port))
        _wait(self._monitored, "the Sentinels did not find each other and the replica")
        return self

    def _sentinel(self, index: int, port: int) -> subprocess.Popen[bytes]:
        folder = self.workdir / f"sentinel-{index}"
        folder.mkdir()
        config = folder / "sentinel.conf"
        name = self.MASTER
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
            f"sentinel monitor {name} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n")
        return subprocess.Popen([self.primary.binary, str(config), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def _monitored(self) -> bool:
        for port in self.sentinel_ports:
            state = _ask(port, lambda s: s.sentinel_master(self.MASTER)) or {}
            if state.get("num-other-sentinels") != 2 or state.get("num-slaves") != 1:
                return False
        return True

    def master_port(self) -> int:
        """The primary's port as the first Sentinel that answers sees it."""
        for port in self.sentinel_ports:
            found = _ask(port, lambda s: s.sentinel_get_master_addr_by_name(self.MASTER))
            if found:
                return int(found[1])
        raise ServiceUnavailable("no Sentinel answers")

    def kill_primary(self) -> None:
        """SIGKILL the primary: what it had not yet sent to the replica is lost."""
        self.primary.kill()

    def wait_failover(self, timeout_s: float = 30.0) -> int:
        """Wait until the Sentinels name the replica as the primary; its port."""
        assert self.replica is not None
        replica = self.replica.port
        _wait(lambda: self.master_port() == replica and (_ask(
            replica, lambda r: r.info("replication")) or {}).get("role") == "master",
            "no failover to the replica", timeout_s)
        return replica

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=5)
        for server in (self.primary, self.replica):
            if server is not None:
                server.stop()


def _redis(port: int) -> Any:
    """A client on 127.0.0.1:``port`` (a Redis or a Sentinel) that tries once."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(port=port, socket_timeout=1.0, socket_connect_timeout=1.0,
                       retry=Retry(NoBackoff(), 0), decode_responses=True)


def _ask(port: int, call: Any) -> Any:
    """``call(client)`` on 127.0.0.1:``port``; None when it does not answer."""
    import redis

    client = _redis(port)
    try:
        return call(client)
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def _wait(ready: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"{what} within {timeout_s} s")
        time.sleep(0.1)


@contextmanager
def moto_server() -> Iterator[str]:
    """The endpoint URL of moto's S3 server on a free loopback port, run in a thread of this
    process. The caller provides (dummy) AWS credentials in the environment."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise ServiceUnavailable(f"moto[server] is not installed ({exc}): "
                                 "pip install -e '.[dev]'") from None
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


class LoggedProcess:
    """A child process with its output in a log file: SIGKILL it, or stop it gracefully."""

    process: subprocess.Popen[bytes]
    log_path: Path
    _log: Any

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL (an OOM kill, a lost machine), and reap it: a zombie would still look
        alive to whatever comes next."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (a warm shutdown: running work finishes), then SIGKILL after ``timeout_s``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)


class WorkerProcess(LoggedProcess):
    """One rstream worker process with its log in a file, started as ``rstream worker`` would
    start it (the command line comes from :func:`rstream.worker.runtime.launcher.worker_command`).

    ``supervised=True`` starts ``rstream worker --cpu`` itself: the launcher that restarts a
    worker process that dies. ``by_hand=True`` starts ``celery -A APP worker -n NAME@%h`` and
    nothing more, as a person would (pool, concurrency, queues and logging are the app's
    defaults). ``app`` names another Celery app module (the benchmarks add a stats command to
    rstream's own). ``omp_threads`` caps torch's CPU threads unless the environment already
    does (None: torch's default).
    """

    def __init__(self, settings: Settings, log_path: Path, name: str, *,
                 queue: str = INFER_QUEUE, concurrency: int = 2, app: str = "rstream.worker.app",
                 extra_env: dict[str, str] | None = None, supervised: bool = False,
                 by_hand: bool = False, omp_threads: int | None = 2) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
        env.update(settings.as_env())
        env["PYTHONUNBUFFERED"] = "1"
        if omp_threads:  # tests: the two shared cores are not oversubscribed
            env.setdefault("OMP_NUM_THREADS", str(omp_threads))
        if not settings.device.startswith("cuda"):
            env.setdefault("CUDA_VISIBLE_DEVICES", "")  # as `rstream worker --cpu` does
        env.update(extra_env or {})
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        command = worker_command(settings, queue, concurrency, name, app=app)
        if supervised:
            env["RSTREAM_CONCURRENCY"] = str(concurrency)
            command = [command[0], "-m", "rstream.producer.cli", "worker", "--cpu"]
        if by_hand:
            command = [command[0], "-m", "celery", "-A", app, "worker", "-n", f"{name}@%h"]
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = WORKER_READY_TIMEOUT_S) -> WorkerProcess:
        deadline = time.monotonic() + timeout_s
        while "ready." not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready after {timeout_s} s:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self



class WatcherProcess(LoggedProcess):
    """``rstream watch ARGS`` as a process (``python -m rstream.producer.cli watch``), its log in a
    file. With ``hook`` (``POINT:N``, see tests/watch_hook.py) it runs through that module,
    which pauses the watcher the N-th time it reaches POINT after writing ``marker``, so that
    a test can SIGKILL it exactly there."""

    def __init__(self, settings: Settings, log_path: Path, args: list[str], *,
                 hook: str | None = None, marker: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
        env.update(settings.as_env())
        env["PYTHONUNBUFFERED"] = "1"
        module = "rstream.producer.cli"
        if hook:
            assert marker is not None
            env.update({"WATCH_HOOK": hook, "WATCH_HOOK_MARKER": str(marker)})
            module = "tests.watch_hook"
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in kill() / stop()
        self.process = subprocess.Popen([sys.executable, "-m", module, "watch", *args],
                                        cwd=REPO, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def wait_for(self, text: str, timeout_s: float = 60.0) -> WatcherProcess:
        """Wait until ``text`` is in the log; RuntimeError if the watcher exits first."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"watcher exited with {self.process.returncode}:\n"
                                   f"{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in the watcher's log after {timeout_s} s:\n"
                                   f"{self.log()[-3000:]}")
            time.sleep(0.05)
        return self


def publish_random_model(settings: Settings, name: str = "tiny", *, seed: int = 1,
                         classes: int = 10, resize: int = 72, crop: int = 64) -> str:
    """A seeded random resnet18 published in the registry of ``settings``: ``NAME@VERSION``.

    The 64 px input keeps the forward pass cheap where the pipeline, not the model, is under
    test; pass ``resize=256, crop=224`` for the real workload.
    """
    from rstream.shared.models.registry import Registry
    from rstream.shared.storage import Storage
    from rstream.worker.model.loader import load_model, save_model
    from rstream.worker.model.preprocess import Preprocessing

    loaded = load_model(f"random:resnet18:classes={classes}:seed={seed}")
    registry = Registry(Storage(settings), settings.models)
    version = save_model(registry, name, loaded.module, arch="resnet18",
                         classes=[f"digit-{i}" for i in range(classes)],
                         preprocessing=Preprocessing(resize=resize, crop=crop))
    return f"{name}@{version}"
