"""``rstream models import``: your own torchvision checkpoints in, checked; registry versions out
as plain state_dicts that torchvision loads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision

from rstream.producer.cli import main
from rstream.shared.models.registry import Registry
from rstream.shared.storage import Storage
from rstream.worker.model.loader import load_model, load_version
from tests.settings import make_settings

LABELS = [f"digit-{i}" for i in range(10)]


class Marker:
    """Unpickling this creates a file: proof that a loader executed code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.path,))


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("RSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RSTREAM_STORAGE_ROOT", str(tmp_path / "root"))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(Storage(make_settings(storage_root=str(tmp_path / "root"))), "models")


def trained(arch: str = "resnet18", classes: int = 10) -> torch.nn.Module:
    """What a plain training script ends with: a torchvision model, here seeded, not trained."""
    torch.manual_seed(3)
    return getattr(torchvision.models, arch)(num_classes=classes)


def labels_file(tmp_path: Path, labels: list[str], name: str = "labels.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(labels) + "\n")
    return path


def run_import(path: Path, labels: Path, *extra: str) -> int:
    return main(["models", "import", str(path), "--name", "digits", "--arch", "resnet18",
                 "--labels", str(labels), *extra])


def sample() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_a_state_dict_from_torch_save_becomes_a_production_version(
        tmp_path: Path, registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    model = trained().eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")

    code = run_import(tmp_path / "model.pt", labels_file(tmp_path, LABELS), "--promote")

    assert code == 0, capsys.readouterr().err
    version = registry.production("digits")
    assert capsys.readouterr().out.strip() == f"digits@{version} (now in production)"
    loaded = load_version(registry, "digits", version)
    assert loaded.classes == LABELS and loaded.arch == "resnet18"
    with torch.inference_mode():
        assert torch.equal(loaded.module.eval()(sample()), model(sample()))
    assert registry.read_meta("digits", version)["imported"]["file"] == "model.pt"
    assert main(["models", "ls", "digits"]) == 0
    assert "imported from model.pt" in capsys.readouterr().out


def test_a_reference_script_checkpoint_with_args_and_ddp_prefix_is_accepted(
        tmp_path: Path, registry: Registry) -> None:
    # torchvision's references/classification/train.py saves this shape of checkpoint.
    model = trained().eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 89,
                "args": argparse.Namespace(lr=0.1, model="resnet18")}, tmp_path / "ckpt.pth")
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                tmp_path / "model.safetensors")

    assert run_import(tmp_path / "ckpt.pth", labels_file(tmp_path, LABELS)) == 0
    assert run_import(tmp_path / "model.safetensors", labels_file(tmp_path, LABELS)) == 0

    versions = registry.versions("digits")
    assert len(versions) == 2 and registry.read_pointer("digits") == (None, None)
    for version in versions:
        with torch.inference_mode():
            out = load_version(registry, "digits", version).module.eval()(sample())
            assert torch.equal(out, model(sample()))


def test_a_registry_version_loads_into_plain_torchvision(tmp_path: Path,
                                                         registry: Registry) -> None:
    model = trained().eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    assert run_import(tmp_path / "model.pt", labels_file(tmp_path, LABELS)) == 0
    version = registry.versions("digits")[0]
    weights = tmp_path / "root" / registry.weights_uri("digits", version)

    plain = torchvision.models.resnet18(num_classes=len(LABELS))
    plain.load_state_dict(safetensors.torch.load_file(weights), strict=True)

    with torch.inference_mode():
        assert torch.equal(plain.eval()(sample()), model(sample()))


@pytest.mark.parametrize(("make", "labels", "message"), [
    (lambda: trained().state_dict(), [f"c{i}" for i in range(1000)],
     "model.pt has 10 classes (fc.weight is [10, 512]) but the labels list 1000: give the "
     "labels the model was trained with"),
    (lambda: trained("resnet50").state_dict(), LABELS,
     "model.pt does not fit resnet18: 198 weights are not resnet18's (first: "
     "layer1.0.conv3.weight); it fits resnet50: use --arch resnet50"),
    (lambda: {k: v for k, v in trained().state_dict().items() if not k.startswith("layer4.1")},
     LABELS, "model.pt does not fit resnet18: 10 of its weights are missing (first: "
     "layer4.1.conv1.weight)"),
    (lambda: {"epoch": torch.tensor(3)} | {"optimizer": {"lr": 0.1}},
     LABELS, "model.pt: holds no state_dict"),
])
def test_a_checkpoint_that_does_not_fit_is_one_clear_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], make, labels, message) -> None:
    torch.save(make(), tmp_path / "model.pt")

    code = run_import(tmp_path / "model.pt", labels_file(tmp_path, labels))

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"rstream: error: {tmp_path / message}") and err.count("\n") == 1
    assert not (tmp_path / "root" / "models").exists()


def test_a_pickled_object_is_refused_without_running_it(
        tmp_path: Path, registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "unpickled"
    torch.save({"fc.weight": Marker(marker)}, tmp_path / "model.pt")

    assert run_import(tmp_path / "model.pt", labels_file(tmp_path, LABELS)) == 2

    assert "not plain weights, refused without unpickling it" in capsys.readouterr().err
    assert not marker.exists()
    assert registry.versions("digits") == []


@pytest.mark.parametrize(("content", "name", "message"), [
    ("", "labels.txt", "lists no labels"),
    ("cat\ndog\ncat\n", "labels.txt", "lists 'cat' twice"),
    ('{"0": "cat"}', "labels.json", "use a JSON list of strings"),
])
def test_a_bad_labels_file_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    content: str, name: str, message: str) -> None:
    torch.save(trained().state_dict(), tmp_path / "model.pt")
    (tmp_path / name).write_text(content)

    assert run_import(tmp_path / "model.pt", tmp_path / name) == 2

    assert message in capsys.readouterr().err


def test_missing_torchvision_weights_name_the_url_to_fetch_them_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(Exception) as info:
        load_model("torchvision:resnet18:IMAGENET1K_V1")
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert f"fetch it from {url}" in str(info.value)
