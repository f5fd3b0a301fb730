"""The registry format, and loading that never runs code from a file."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch

from rstream.shared.errors import ModelError, NotFoundError, TransientError
from rstream.shared.models.refs import ARCHS, TORCHVISION_WEIGHTS
from rstream.shared.models.registry import Registry
from rstream.shared.storage import Storage
from rstream.shared.storage.local import LocalBackend
from rstream.worker.model.loader import load_model, load_version, save_model
from rstream.worker.model.preprocess import Preprocessing
from tests.settings import make_settings


class Marker:
    """Unpickling this creates a file: proof that a loader executed code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.path,))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(Storage(make_settings(storage_root=str(tmp_path / "root"))), "models")


def tiny_input() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_the_torch_free_weights_table_matches_torchvision() -> None:
    import torchvision

    for arch in ARCHS:
        enum = torchvision.models.get_model_weights(arch)
        assert TORCHVISION_WEIGHTS[arch] == tuple(w.name for w in enum), arch


def test_random_models_are_seeded_and_label_their_classes() -> None:
    ref = "random:resnet18:classes=4:seed=5"
    a, b, other = load_model(ref), load_model(ref), load_model("random:resnet18:classes=4:seed=6")
    with torch.inference_mode():
        assert torch.equal(a.module(tiny_input()), b.module(tiny_input()))
        assert not torch.equal(a.module(tiny_input()), other.module(tiny_input()))
    assert a.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert a.model_id == "random:resnet18:classes=4:seed=5"


def test_save_then_load_gives_identical_logits_and_meta(registry: Registry) -> None:
    original = load_model("random:resnet18:classes=3:seed=2")
    spec = Preprocessing(resize=72, crop=64)
    version = save_model(registry, "tiny", original.module, arch="resnet18",
                         classes=["cat", "dog", "fish"], preprocessing=spec,
                         extra={"metrics": {"val_accuracy": 0.5}})
    loaded = load_version(registry, "tiny", version)
    with torch.inference_mode():
        assert torch.equal(original.module.eval()(tiny_input()), loaded.module.eval()(tiny_input()))
    assert loaded.classes == ["cat", "dog", "fish"]
    assert loaded.preprocessing == spec
    assert loaded.model_id == f"tiny@{version}"
    assert loaded.meta["metrics"] == {"val_accuracy": 0.5}
    assert registry.versions("tiny") == [version]


def test_a_pickle_in_place_of_the_weights_is_refused_without_running_it(
        registry: Registry, tmp_path: Path) -> None:
    model = load_model("random:resnet18:classes=3")
    version = save_model(registry, "tiny", model.module, arch="resnet18", classes=["a", "b", "c"],
                         preprocessing=Preprocessing())
    marker = tmp_path / "unpickled"
    registry.storage.write(registry.weights_uri("tiny", version), pickle.dumps(Marker(marker)))
    with pytest.raises(ModelError, match="unreadable"):
        load_version(registry, "tiny", version)
    assert not marker.exists()


def test_a_pickle_in_the_torch_hub_cache_is_refused_without_running_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "hub" / "hub" / "checkpoints" / os.path.basename(weights.url)
    cached.parent.mkdir(parents=True)
    marker = tmp_path / "unpickled"
    torch.save({"fc.weight": Marker(marker)}, cached)  # a torch checkpoint holding an object
    with pytest.raises(ModelError, match="not plain weights"):
        load_model("torchvision:resnet18:IMAGENET1K_V1")
    assert not marker.exists()


def test_missing_torchvision_weights_name_the_file_and_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(ModelError) as info:
        load_model("torchvision:resnet50:IMAGENET1K_V2")
    message = str(info.value)
    assert "resnet50-11ad3fa6.pth" in message
    assert str(tmp_path / "hub" / "hub" / "checkpoints") in message
    assert "never downloads" in message


def test_weights_of_the_wrong_shape_or_with_nan_are_refused(registry: Registry) -> None:
    model = load_model("random:resnet18:classes=3")
    version = save_model(registry, "tiny", model.module, arch="resnet18", classes=["a", "b", "c"],
                         preprocessing=Preprocessing())
    meta_uri = registry.meta_uri("tiny", version)
    meta = json.loads(registry.storage.read(meta_uri))
    registry.storage.write(meta_uri, json.dumps({**meta, "classes": ["a", "b"]}).encode())
    with pytest.raises(ModelError, match="do not fit resnet18 with 2 classes"):
        load_version(registry, "tiny", version)

    registry.storage.write(meta_uri, json.dumps(meta).encode())
    state = {k: v.contiguous() for k, v in model.module.state_dict().items()}
    state["fc.bias"] = torch.full_like(state["fc.bias"], float("nan"))
    registry.storage.write(registry.weights_uri("tiny", version), safetensors.torch.save(state))
    with pytest.raises(ModelError, match="NaN"):
        load_version(registry, "tiny", version)


def test_a_name_without_production_says_how_to_promote(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="rstream models promote"):
        load_model("nothing-here", registry)


class ThrottledWeights(LocalBackend):
    """Reads of weights files fail with TransientError, as S3 throttling surfaces after
    botocore's retries. A stand-in by necessity: here only the loader's mapping is at stake
    (tests/integration/test_s3_faults.py injects real faults over HTTP)."""

    def read_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        if key.endswith("weights.safetensors"):
            raise TransientError(f"{self.uri(key)}: SlowDown (after retries)")
        return super().read_versioned(key, max_bytes)


def test_a_throttled_weights_read_stays_transient(registry: Registry, tmp_path: Path) -> None:
    version = save_model(registry, "tiny", load_model("random:resnet18:classes=3").module,
                         arch="resnet18", classes=["a", "b", "c"], preprocessing=Preprocessing())
    registry.storage.local = ThrottledWeights(registry.storage.local.root)
    with pytest.raises(TransientError, match="SlowDown"):  # retried by the chunk, not refused
        load_version(registry, "tiny", version)
