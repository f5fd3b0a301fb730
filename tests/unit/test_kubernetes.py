"""deploy/kubernetes, checked without a cluster: both overlays render (``kubectl kustomize``
where this machine has kubectl; else a small reader of the same files that the kubectl path
also checks), and what they render holds the properties docs/kubernetes.md promises."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rstream.producer.cli import build_parser
from rstream.shared.constants import INFER_QUEUE
from rstream.shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("gpu", "cpu")
PROCESSES = ("rstream-worker", "rstream-trainer", "rstream-api", "rstream-watcher",
             "rstream-beat", "rstream-exporter")
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|REDIS_URL|ACCESS_KEY|BASIC_AUTH")


# A reader of the kustomize features these files use: resources, components, namespace,
# labels, an env-file configMapGenerator, images and JSON 6902 patches.

def _read(folder: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []) + spec.get("components", []):
        path = folder / entry
        docs += _read(path) if path.is_dir() else [
            d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in spec.get("configMapGenerator", []):
        data = dict(line.split("=", 1) for env in generator["envs"]
                    for line in (folder / env).read_text().splitlines() if "=" in line)
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": generator["name"]}, "data": data})
    for patch in spec.get("patches", []):
        for doc in docs:
            target = patch["target"]
            if doc["kind"] == target["kind"] and doc["metadata"]["name"] == target["name"]:
                for op in yaml.safe_load((folder / patch["path"]).read_text()):
                    _apply(doc, op)
    for doc in docs:
        if spec.get("namespace") and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = spec["namespace"]
        for image in spec.get("images", []):
            for container in _containers(doc):
                if container["image"] == image["name"]:
                    container["image"] = f"{image['name']}:{image['newTag']}"
    return docs


def _apply(doc: dict[str, Any], op: dict[str, Any]) -> None:
    *parents, last = [int(p) if p.isdigit() else p for p in op["path"].strip("/").split("/")]
    node: Any = doc
    for key in parents:
        node = node[key]
    if op["op"] == "remove":
        del node[last]
    else:
        node[last] = copy.deepcopy(op["value"])


def _kubectl(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(KUBE / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []))


def render(overlay: str) -> list[dict[str, Any]]:
    return _kubectl(overlay) if shutil.which("kubectl") else _read(KUBE / "overlays" / overlay)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[tuple[str, str], Any]]:
    docs = render(request.param)
    named = {}
    for doc in docs:
        name = re.sub(r"-[a-z0-9]{10}$", "", doc["metadata"]["name"])  # kustomize's hash
        named[(doc["kind"], name)] = doc
    return request.param, named


def _settings(named: dict[tuple[str, str], Any]) -> dict[str, str]:
    return dict(named[("ConfigMap", "rstream-settings")]["data"])


def test_the_reader_renders_what_kubectl_renders() -> None:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed: only the reader renders here")
    for overlay in OVERLAYS:
        ours = {(d["kind"], d["metadata"]["name"]): d for d in _read(KUBE / "overlays" / overlay)}
        theirs = {(d["kind"], re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"])): d
                  for d in _kubectl(overlay)}
        assert set(ours) == set(theirs)
        for key, doc in ours.items():
            assert [c["command"] for c in _containers(doc)] == [
                c["command"] for c in _containers(theirs[key])]


def test_every_process_is_there_and_beat_and_the_watcher_run_once(rendered: Any) -> None:
    _, named = rendered
    for process in PROCESSES:
        assert ("Deployment", process) in named, process
    assert ("StatefulSet", "rstream-redis") in named
    for service in ("rstream-api", "rstream-exporter", "rstream-redis"):
        assert ("Service", service) in named
    for single in ("rstream-beat", "rstream-watcher"):
        spec = named[("Deployment", single)]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", single
    redis = _containers(named[("StatefulSet", "rstream-redis")])[0]
    assert "--appendonly yes" in " ".join(redis["command"])


def test_commands_parse_and_match_docker_compose(rendered: Any) -> None:
    overlay, named = rendered
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    in_compose = {"rstream-worker": "worker-gpu0", "rstream-trainer": "trainer",
                  "rstream-api": "api", "rstream-watcher": "watcher", "rstream-beat": "beat",
                  "rstream-exporter": "exporter"}
    parser = build_parser()
    for process, service in in_compose.items():
        command = _containers(named[("Deployment", process)])[0]["command"]
        assert command[0] == "rstream"
        parser.parse_args(command[1:])  # SystemExit on a stale option
        theirs = compose[service].get("entrypoint", []) + compose[service]["command"]
        if overlay == "gpu":
            assert command == theirs, process


def test_probes_point_at_endpoints_the_processes_serve(rendered: Any) -> None:
    _, named = rendered
    settings = Settings.from_env(_settings(named))
    served = {  # path -> where the code serves it
        "rstream-worker": ({"/healthz", "/readyz"}, settings.metrics_port),
        "rstream-trainer": ({"/healthz", "/readyz"}, settings.metrics_port),
        "rstream-api": ({"/healthz", "/readyz"}, settings.api_port),
        "rstream-exporter": ({"/healthz", "/readyz"}, settings.exporter_port),
        "rstream-watcher": ({"/metrics"}, 9108),
    }
    lifecycle = (ROOT / "worker" / "runtime" / "lifecycle.py").read_text()
    assert '"/healthz"' in lifecycle and '"/readyz"' in lifecycle
    for process, (paths, port) in served.items():
        container = _containers(named[("Deployment", process)])[0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for kind in ("livenessProbe", "readinessProbe"):
            probe = container[kind]["httpGet"]
            assert probe["path"] in paths, (process, kind, probe)
            assert ports[probe["port"]] == port, (process, kind)
        if process == "rstream-watcher":
            assert f"--metrics-port {port}" in " ".join(container["command"])


def test_workers_drain_within_their_grace_and_scale_on_the_infer_queue(rendered: Any) -> None:
    overlay, named = rendered
    drain = float(_settings(named)["RSTREAM_DRAIN_SECONDS"])
    for process in ("rstream-worker", "rstream-trainer"):
        spec = named[("Deployment", process)]["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > drain + 5, process
    scaled = named[("ScaledObject", "rstream-worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "rstream-worker"
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == INFER_QUEUE
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    # The list is the backlog only while a worker reserves one message per thread.
    app = (ROOT / "shared" / "queue" / "app.py").read_text()
    assert "worker_prefetch_multiplier=1" in app and "task_acks_late=True" in app
    worker = _containers(named[("Deployment", "rstream-worker")])[0]
    gpus = worker["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "gpu":
        assert gpus == 1
        env = {e["name"]: e.get("value", "") for e in worker["env"]}
        assert "video" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    else:
        assert gpus is None and "--cpu" in worker["command"]
        assert "nvidia.com/gpu" not in yaml.safe_dump(list(named.values()))


def test_no_plaintext_secret_and_every_pod_is_locked_down(rendered: Any) -> None:
    _, named = rendered
    assert not [key for key in named if key[0] == "Secret"], "the Secret is the user's"
    assert not [k for k in _settings(named) if SECRETISH.search(k)]
    Settings.from_env({k: v for k, v in _settings(named).items() if k.startswith("RSTREAM_")})
    for (_, name), doc in named.items():
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if pod is None:
            continue
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), (name, image)
            for env in container.get("env", []):
                if SECRETISH.search(env["name"]):
                    assert "valueFrom" in env and "value" not in env, (name, env["name"])
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            resources = container["resources"]
            assert resources["requests"] and resources["limits"]["memory"], name
