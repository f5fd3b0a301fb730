"""docker-compose.yml: valid, and every command and variable in it exists in the code.

No Docker engine runs here, so the file is checked, not started: by ``docker-compose config
-q`` when that tool is installed, and by reading it against the CLI parser and the settings.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from producer.cli import build_parser
from shared.settings import _ENV_NAMES, ENV_PREFIX

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def rstream_services(services: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in services.items() if s.get("image", "").startswith("rstream")}


def test_compose_file_is_valid_for_docker_compose() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    result = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_every_rstream_command_parses(services: dict[str, Any]) -> None:
    for name, service in rstream_services(services).items():
        argv = list(service.get("entrypoint") or []) + list(service.get("command") or [])
        assert argv[0] == "rstream", f"{name}: runs {argv}"
        build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown command or flag


def test_every_setting_variable_exists(services: dict[str, Any]) -> None:
    for name, service in rstream_services(services).items():
        env = service.get("environment") or {}
        unknown = [k for k in env if k.startswith(ENV_PREFIX) and k not in _ENV_NAMES]
        assert not unknown, f"{name}: unknown settings {unknown}"
        assert "RSTREAM_REDIS_URL" in env, name


def test_one_worker_per_gpu_with_its_reservation(services: dict[str, Any]) -> None:
    workers = {n: s for n, s in services.items() if n.startswith(("worker-gpu", "trainer"))}
    assert len(workers) >= 1
    reserved = []
    for name, service in workers.items():
        assert "CUDA_VISIBLE_DEVICES" in service["environment"], name
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name
        reserved.extend(devices[0]["device_ids"])
    assert len(reserved) == len(set(reserved)) == len(workers), "one distinct GPU per worker"


def test_redis_keeps_an_append_only_file_and_minio_gets_the_bucket(
        services: dict[str, Any]) -> None:
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] \
        == "yes"
    bucket = services["worker-gpu0"]["environment"]["RSTREAM_ALLOWED_BUCKETS"]
    assert f"local/{bucket}" in " ".join(services["minio-init"]["command"])


def test_trainer_consumes_the_train_queue_and_beat_schedules(services: dict[str, Any]) -> None:
    trainer = services["trainer"]
    assert "--train" in trainer["command"]
    assert trainer["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == [
        "gpu"]
    assert services["beat"]["command"] == ["rstream", "beat"]
    assert "RSTREAM_TRAIN_SCHEDULE" in services["beat"]["environment"]


def test_the_image_installs_the_worker_and_api_extras() -> None:
    # The core install is the submission side only: a worker image without the extra has no
    # torch, and every worker service in the file would crash at its first chunk.
    dockerfile = (COMPOSE.parent / "Dockerfile").read_text()
    assert "pip install --no-cache-dir '.[worker,api]'" in dockerfile


def test_the_api_service_has_a_healthcheck_and_serves_the_network_only_with_tokens(
        services: dict[str, Any]) -> None:
    api = services["api"]
    assert api["command"] == ["rstream", "api"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["environment"]["RSTREAM_API_HOST"] == "0.0.0.0"
    assert api["environment"]["RSTREAM_API_TOKENS"].startswith("${RSTREAM_API_TOKENS")
