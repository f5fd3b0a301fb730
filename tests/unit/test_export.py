"""Exported models give rstream's answers, loaded in a fresh process; ONNX is exported once per
version and cached next to its weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rstream.shared.models.registry import Registry
from rstream.shared.storage import Storage
from rstream.worker.model import export as export_module
from rstream.worker.model.loader import load_model, save_model
from rstream.worker.model.onnx import OnnxPredictor, resolve_backend
from rstream.worker.model.predict import Predictor
from rstream.worker.model.preprocess import decode_image, normalize
from tests.images import jpeg_bytes, photo
from tests.settings import make_settings

pytest.importorskip("onnxruntime", reason="the worker extra (onnxruntime) is not installed")

REPO = Path(__file__).resolve().parents[2]
PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "china", "flower"]


def spread_model(registry: Registry) -> str:
    """A resnet18 whose fc is scaled up, so top-5 classes are far apart (a random init puts
    every image in the same few classes with near-equal probabilities)."""
    loaded = load_model("random:resnet18:classes=20:seed=7")
    with torch.no_grad():
        loaded.module.fc.weight.mul_(60)
    version = save_model(registry, "spread", loaded.module, arch="resnet18",
                         classes=[f"c{i}" for i in range(20)],
                         preprocessing=loaded.preprocessing)
    return f"spread@{version}"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(Storage(make_settings(storage_root=str(tmp_path / "root"))), "models")


def inputs() -> torch.Tensor:
    spec = load_model("random:resnet18:classes=2").preprocessing
    images = [decode_image(jpeg_bytes(photo(name, (320, 240))), spec, 10**8) for name in PHOTOS]
    return normalize(torch.stack(images), spec)


def test_exported_files_give_rstreams_top5_in_a_fresh_process(
        registry: Registry, tmp_path: Path) -> None:
    ref = spread_model(registry)
    settings = make_settings(storage_root=str(tmp_path / "root"))
    x = inputs()
    torch.save(x, tmp_path / "x.pt")
    eager = Predictor(load_model(ref, registry), torch.device("cpu"), "fp32", topk=5)
    expected = [[c["index"] for c in top] for top in eager.predict(
        torch.stack([decode_image(jpeg_bytes(photo(n, (320, 240))), eager.preprocessing, 10**8)
                     for n in PHOTOS]))]
    assert len({tuple(t) for t in expected}) > 1, "the probe spreads its classes"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
    env.update(settings.as_env())
    for fmt, load in (("onnx", "import onnxruntime as ort; s = ort.InferenceSession(path); "
                               "logits = torch.from_numpy(s.run(None, {'x': x.numpy()})[0])"),
                      ("torchscript", "m = torch.jit.load(path); logits = m(x)")):
        out = tmp_path / f"model.{fmt}"
        result = subprocess.run([sys.executable, "-m", "rstream.producer.cli", "models", "export",
                                 ref, "--format", fmt, "--out", str(out)], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        sidecar = json.loads(Path(f"{out}.json").read_text())
        assert sidecar["model"] == ref and len(sidecar["classes"]) == 20
        x_path = tmp_path / "x.pt"
        code = (f"import torch, json; path = {str(out)!r}; x = torch.load({str(x_path)!r}); "
                f"{load}; print(json.dumps(logits.topk(5, dim=1).indices.tolist()))")
        fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=300, check=False)
        assert fresh.returncode == 0, fresh.stderr
        assert json.loads(fresh.stdout.splitlines()[-1]) == expected, fmt


def test_onnx_is_exported_once_per_version_and_kept_next_to_its_weights(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = spread_model(registry)
    name, version = ref.split("@")
    calls: list[str] = []
    real = export_module.onnx_bytes

    def counting(module: torch.nn.Module, crop: int) -> bytes:
        calls.append(name)
        return real(module, crop)

    monkeypatch.setattr(export_module, "onnx_bytes", counting)
    first = OnnxPredictor(load_model(ref, registry), torch.device("cpu"), registry=registry)
    assert registry.storage.exists(registry.version_uri(name, version, "model.onnx"))
    second = OnnxPredictor(load_model(ref, registry), torch.device("cpu"), registry=registry)
    assert calls == [name], "the second predictor loaded the kept file"
    batch = torch.stack([decode_image(jpeg_bytes(photo("coffee", (320, 240))),
                                      first.preprocessing, 10**8)])
    assert first.predict(batch) == second.predict(batch)


def test_a_damaged_kept_file_is_exported_again(registry: Registry) -> None:
    ref = spread_model(registry)
    name, version = ref.split("@")
    registry.storage.write(registry.version_uri(name, version, "model.onnx"), b"not onnx")
    predictor = OnnxPredictor(load_model(ref, registry), torch.device("cpu"), registry=registry)
    batch = torch.stack([decode_image(jpeg_bytes(photo("coffee", (320, 240))),
                                      predictor.preprocessing, 10**8)])
    eager = Predictor(load_model(ref, registry), torch.device("cpu"), "fp32")
    assert [c["index"] for c in predictor.predict(batch)[0]] == [
        c["index"] for c in eager.predict(batch)[0]]


def test_auto_is_onnx_on_the_cpu_and_eager_on_cuda() -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "onnx"
    assert resolve_backend("auto", torch.device("cuda")) == "eager"
    assert resolve_backend("eager", torch.device("cpu")) == "eager"
