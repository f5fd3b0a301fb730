"""docker-compose.yml: valid, hardened, and every command and variable in it exists in the code.

No Docker engine runs here, so the file is checked, not started: by ``docker-compose config
-q`` when that tool is installed (with ``.env.example`` as its ``.env``), and by reading it
against the CLI parser and the settings, and property by property: restart policies,
healthchecks, the Redis password in every URL, Flower's basic auth, credentials only from
``.env``, pinned images, a non-root user in the Dockerfile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rstream.producer.cli import build_parser
from rstream.shared.settings import _ENV_NAMES, ENV_PREFIX

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE.parent / ".env.example"
REQUIRED = re.compile(r"\$\{(\w+):\?")  # ${NAME:?message}: compose refuses to start without it
ONE_SHOT = {"minio-init", "producer"}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def rstream_services(services: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in services.items() if s.get("image", "").startswith("rstream")}


def docker_compose(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f docker-compose.yml ARGS`` with ``cwd`` as the project directory
    (where it reads ``.env``) and none of this shell's variables."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd)}
    return subprocess.run([tool, "-f", str(COMPOSE), "--project-directory", str(cwd), *args],
                          capture_output=True, text=True, check=False, env=env, cwd=cwd)


def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    result = docker_compose("config", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_without_a_dot_env_compose_refuses_to_start_and_names_the_variable(
        tmp_path: Path) -> None:
    result = docker_compose("config", "-q", cwd=tmp_path)
    assert result.returncode != 0
    assert "in .env (see .env.example)" in result.stderr


def test_every_required_variable_is_in_the_example_and_dot_env_is_not_committed() -> None:
    required = set(REQUIRED.findall(COMPOSE.read_text()))
    assert {"REDIS_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "FLOWER_USER",
            "FLOWER_PASSWORD"} <= required
    example = {line.partition("=")[0] for line in ENV_EXAMPLE.read_text().splitlines()
               if line and not line.startswith("#")}
    assert required <= example, f"missing from .env.example: {sorted(required - example)}"
    ignored = (COMPOSE.parent / ".gitignore").read_text().splitlines()
    assert ".env" in ignored


def test_no_secret_has_a_default_in_the_compose_file() -> None:
    text = COMPOSE.read_text()
    defaults = re.findall(r"\$\{(\w*(?:PASSWORD|USER|SECRET|AUTH)\w*):?-", text)
    assert defaults == [], f"secrets with a default value: {defaults}"
    for name in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "REDIS_PASSWORD"):
        assert f"${{{name}:?" in text


def test_every_long_running_service_restarts(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert "restart" not in service, f"{name} runs once"
        else:
            assert service.get("restart") in ("unless-stopped", "always"), name


def test_redis_minio_workers_exporter_and_flower_have_healthchecks(
        services: dict[str, Any]) -> None:
    checked = {"redis", "minio", "worker-gpu0", "worker-gpu1", "trainer", "exporter", "flower"}
    assert checked <= set(services)
    for name in checked:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "REDISCLI_AUTH" in services["redis"]["environment"], "the ping authenticates"
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])


def test_workers_are_checked_on_healthz_at_their_metrics_port(services: dict[str, Any]) -> None:
    for name in ("worker-gpu0", "worker-gpu1", "trainer"):
        env = services[name]["environment"]
        assert env["RSTREAM_METRICS_HOST"] == "0.0.0.0", name
        url = f"http://127.0.0.1:{env['RSTREAM_METRICS_PORT']}/healthz"
        assert url in " ".join(services[name]["healthcheck"]["test"]), name
    exporter = services["exporter"]
    assert f"127.0.0.1:{exporter['environment']['RSTREAM_EXPORTER_PORT']}/healthz" in " ".join(
        exporter["healthcheck"]["test"])


def test_redis_has_a_password_and_every_url_carries_it(services: dict[str, Any]) -> None:
    command = " ".join(services["redis"]["command"])
    assert '--requirepass "$$REDIS_PASSWORD"' in command
    assert "REDIS_PASSWORD" in services["redis"]["environment"]
    urls = {name: s["environment"]["RSTREAM_REDIS_URL"]
            for name, s in rstream_services(services).items()}
    urls["flower"] = services["flower"]["environment"]["CELERY_BROKER_URL"]
    for name, url in urls.items():
        assert url.startswith("redis://:${REDIS_PASSWORD:?"), name
        assert url.endswith("}@redis:6379/0"), name
    assert not any("--broker" in part for part in services["flower"]["command"])


def test_flower_is_behind_basic_auth(services: dict[str, Any]) -> None:
    auth = services["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    assert re.fullmatch(r"\$\{FLOWER_USER:\?[^}]*\}:\$\{FLOWER_PASSWORD:\?[^}]*\}", auth)


def test_published_ports_listen_on_loopback_only(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image}"
        assert re.search(r"\d", tag), f"{name}: {image} is not a version"
    base = re.findall(r"^FROM (\S+)", (COMPOSE.parent / "Dockerfile").read_text(), re.M)
    assert base and all(re.fullmatch(r"[\w./-]+:\d[\w.-]*", image) for image in base), base


def test_the_image_runs_as_a_non_root_user() -> None:
    dockerfile = (COMPOSE.parent / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0", "0:0")
    assert re.search(rf"useradd .*{users[-1]}", dockerfile), "the user is created"


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
    assert "redis-server --appendonly yes" in " ".join(services["redis"]["command"])
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
