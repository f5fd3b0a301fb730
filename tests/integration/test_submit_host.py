"""A submission host: ``pip install rstream`` (no extra) into a clean venv gives a working
``rstream submit / status / wait / results / jobs / models / train`` with no torch, no
torchvision and no PIL installed, against a real Redis and a real worker on another "host"
(a worker process started from the test's own environment).

The venv is built once per set of core dependencies and kept in the user cache (about a
minute the first time); each session reinstalls the project into it, so the code under test
is this checkout's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from tests.pipeline import pipeline_settings
from tests.services import (
    REPO,
    WorkerProcess,
    free_port,
    in_ci,
    sample,
    scrape,
    service_unavailable,
)

INSTALL_TIMEOUT_S = 600


def _venv_dir() -> Path:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    key = hashlib.sha256(repr((project["dependencies"], sys.version)).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rstream" / f"submit-host-{key}"


def _pip(venv: Path, *args: str) -> None:
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args],
                            capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                            check=False)
    if result.returncode != 0:
        message = f"pip install {' '.join(args)} failed: {result.stderr[-2000:]}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        service_unavailable(message)


@pytest.fixture(scope="session")
def submit_venv(wheel: Path) -> Path:
    """A venv with ``pip install <this checkout's wheel>``: the core dependencies only."""
    venv = _venv_dir()
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        _pip(venv, str(wheel))
        (venv / ".complete").touch()
    else:  # the dependencies are there; put this checkout's code in (not editable)
        _pip(venv, "--no-deps", "--force-reinstall", str(wheel))
    return venv


@pytest.fixture
def host(submit_venv: Path, redis_server: str, tmp_path: Path) -> Iterator[Host]:
    url = redis_server.rsplit("/", 1)[0] + "/11"  # a database of its own
    settings = pipeline_settings(url, tmp_path / "root", chunk_size=2)
    (tmp_path / "root").mkdir()
    yield Host(submit_venv, settings, tmp_path)


class Host:
    """Runs the installed ``rstream`` console script with the test's settings."""

    def __init__(self, venv: Path, settings: Settings, cwd: Path) -> None:
        self.venv, self.settings, self.cwd = venv, settings, cwd

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RSTREAM_", "PYTHON", "VIRTUAL_ENV"))}
        env.update(self.settings.as_env())
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        return env

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "rstream"), *args], cwd=self.cwd,
                              env=self.env(), capture_output=True, text=True, timeout=timeout,
                              check=False)

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "python"), "-c", code], cwd=self.cwd,
                              capture_output=True, text=True, timeout=60, check=False)


def test_the_host_has_no_torch_torchvision_or_pil(host: Host) -> None:
    for module in ("torch", "torchvision", "PIL", "numpy"):
        result = host.python(f"import {module}")
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module
    result = host.python("import rstream.producer.cli, rstream.shared.settings; "
                         "print(rstream.producer.cli.__file__)")
    assert result.returncode == 0, result.stderr
    assert str(host.venv) in result.stdout, "the installed copy, not the checkout"
    for name in ("producer", "shared", "worker"):  # one installed name: rstream
        result = host.python(f"import {name}")
        assert "ModuleNotFoundError" in result.stderr, name


def test_submit_wait_results_jobs_through_a_worker(host: Host, tmp_path: Path) -> None:
    from rstream.worker.samples import write_samples  # the worker side writes the images

    write_samples(Storage(host.settings), "photos/", 4, size=(64, 48), seed=3)
    worker = WorkerProcess(host.settings, tmp_path / "worker.log", "host").wait_ready()
    try:
        submitted = host.run("submit", "photos", "--job", "from-host", "--model",
                             "random:resnet18:classes=3", "--wait", "--strict")
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.splitlines()[0] == "from-host"
    finally:
        worker.stop()
    status = host.run("status", "from-host")
    assert status.returncode == 0, status.stderr
    assert "from-host: done  4/4 images (4 ok, 0 failed)" in status.stdout
    results = host.run("results", "from-host")
    lines = [json.loads(line) for line in results.stdout.splitlines()]
    assert sorted(line["uri"] for line in lines) == [f"photos/sample-00000{i}.jpg"
                                                     for i in range(4)]
    assert {line["model"] for line in lines} == {"random:resnet18:classes=3:seed=0"}
    jobs = host.run("jobs")
    assert jobs.returncode == 0 and jobs.stdout.startswith("from-host\tdone\t4/4"), jobs.stdout


def test_models_and_train_commands(host: Host) -> None:
    from rstream.worker.model.loader import load_model, save_model
    from rstream.worker.model.preprocess import Preprocessing

    registry = Registry(Storage(host.settings), host.settings.models)
    module = load_model("random:resnet18:classes=2").module
    versions = [save_model(registry, "cats", module, arch="resnet18", classes=["a", "b"],
                           preprocessing=Preprocessing()) for _ in range(2)]
    for version in versions:
        promoted = host.run("models", "promote", f"cats@{version}")
        assert promoted.returncode == 0, promoted.stderr
    listed = host.run("models", "ls", "cats")
    assert listed.returncode == 0, listed.stderr
    assert f"* cats@{versions[1]}" in listed.stdout and f"  cats@{versions[0]}" in listed.stdout
    rolled = host.run("models", "rollback", "cats")
    assert rolled.returncode == 0 and versions[0] in rolled.stdout, rolled.stderr
    train = host.run("train", "--name", "cats")  # no trainer runs: queued, not waited for
    assert train.returncode == 0, train.stderr
    assert train.stdout.startswith("train-")


def test_the_exporter_serves_queue_metrics_without_torch(host: Host) -> None:
    port = free_port()
    exporter = subprocess.Popen([str(host.venv / "bin" / "rstream"), "exporter", "--port",
                                 str(port)], cwd=host.cwd, env=host.env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                metrics = scrape(f"http://127.0.0.1:{port}/metrics")
                break
            except OSError:
                assert exporter.poll() is None, exporter.communicate()[1]
                assert time.monotonic() < deadline, "the exporter never answered"
                time.sleep(0.2)
        assert sample(metrics, "rstream_redis_up") == 1
        assert ("rstream_queue_depth", frozenset({("queue", "infer")})) in metrics
    finally:
        exporter.send_signal(signal.SIGTERM)
        _, stderr = exporter.communicate(timeout=30)
    assert exporter.returncode == 0, stderr


@pytest.mark.parametrize("command", [
    ["score", "photos"], ["worker"], ["samples", "x"],
    ["models", "import", "m.pt", "--name", "x", "--arch", "resnet18", "--labels", "l.txt"]])
def test_worker_commands_name_the_missing_extra_in_one_line(host: Host,
                                                            command: list[str]) -> None:
    result = host.run(*command)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "pip install 'rstream[worker]'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("model", "reason"), [
    ("random:resnet19", "architecture 'resnet19' is not one of resnet18, resnet50"),
    ("random:resnet18:classes=0", "classes must be at least 1"),
    ("resnet50", "torchvision:resnet50:IMAGENET1K_V2"),
    ("torchvision:resnet50:V9", "no weights 'V9' for resnet50"),
])
def test_a_bad_model_reference_is_refused_at_submit_with_the_reason(
        host: Host, model: str, reason: str) -> None:
    result = host.run("submit", "photos", "--job", "bad-ref", "--model", model)
    assert result.returncode == 2
    assert reason in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert host.run("status", "bad-ref").returncode == 2, "no job record was left behind"
