"""RSTREAM_PRECISION=int8: built from the named calibration images, cached and keyed on them,
recorded with its agreement, refused below RSTREAM_INT8_MIN_AGREEMENT; the validation split
of a trained version is the default set; `rstream models quantize` records it in the meta."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rstream.producer.cli import main as cli
from rstream.shared.errors import ConfigError
from rstream.shared.models.registry import Registry
from rstream.shared.storage import Storage
from rstream.shared.training.splits import is_validation
from rstream.worker.model import quantize
from rstream.worker.model.loader import LoadedModel, load_model, save_model
from rstream.worker.model.onnx import OnnxPredictor, make_predictor
from rstream.worker.model.preprocess import Preprocessing
from tests.probe import probe_jpegs
from tests.settings import make_settings

pytest.importorskip("onnxruntime", reason="the worker extra (onnxruntime) is not installed")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
SPEC = Preprocessing(resize=36, crop=32)
REF = "random:resnet18:classes=10:seed=2"


def tiny() -> LoadedModel:
    loaded = load_model(REF)
    loaded.preprocessing = SPEC
    return loaded


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A storage root with 20 calibration JPEGs in calib/, a private cache, one int8 build."""
    root = tmp_path_factory.mktemp("int8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        for i, data in enumerate(probe_jpegs(20, (48, 40))):
            path = root / "data" / "calib" / f"{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        settings = make_settings(storage_root=str(root / "data"), calibration="calib",
                                 precision="int8")
        torch.set_num_threads(1)
        predictor = make_predictor("auto", tiny(), CPU, "int8", 3, settings=settings)
        yield {"root": root, "settings": settings, "predictor": predictor, "mp": mp}


def test_int8_is_built_from_the_calibration_images_and_recorded(world: Any) -> None:
    predictor = world["predictor"]
    assert isinstance(predictor, OnnxPredictor)
    assert predictor.precision == "int8"
    record = predictor.int8
    assert record is not None
    assert record["calibration"]["images"] == 16 and record["held_out"] == 4
    assert 0.0 <= record["top1_agreement"] <= 1.0
    assert record["speedup_vs_fp32"] > 0
    ops = {node.op_type for node in __import__("onnx").load_from_string(
        _cached(world["root"], ".onnx")[0].read_bytes()).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ, not fp32 under another name
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert [len(top) for top in predictor.predict(images)] == [3, 3, 3]


def _cached(root: Path, suffix: str) -> list[Path]:
    return sorted((root / "cache" / "rstream" / "onnx").glob(f"*int8-*{suffix}"))


def test_a_second_worker_loads_the_cached_int8_and_new_images_make_another(
        world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr(quantize, "build", no_build)
    again = make_predictor("auto", tiny(), CPU, "int8", 3, settings=world["settings"])
    assert isinstance(again, OnnxPredictor) and again.int8 == world["predictor"].int8

    extra = world["root"] / "data" / "calib" / "999.jpg"
    extra.write_bytes(probe_jpegs(1, (48, 40), seed=9)[0])
    try:
        with pytest.raises(AssertionError, match="built again"):
            make_predictor("auto", tiny(), CPU, "int8", 3, settings=world["settings"])
    finally:
        extra.unlink()


def test_an_int8_model_below_the_minimum_agreement_is_refused_with_the_fix(
        world: Any) -> None:
    (record_path,) = _cached(world["root"], ".json")
    record = json.loads(record_path.read_text())
    strict = make_settings(storage_root=world["settings"].storage_root, calibration="calib")
    record_path.write_text(json.dumps({**record, "top1_agreement": 0.5}))
    try:
        with pytest.raises(ConfigError, match=r"50\.0% of 4 held-out images, below "
                           r"RSTREAM_INT8_MIN_AGREEMENT=.*rstream models quantize"):
            make_predictor("auto", tiny(), CPU, "int8", 3, settings=strict)
    finally:
        record_path.write_text(json.dumps(record))


def test_int8_on_the_eager_backend_is_refused_with_the_fix(world: Any) -> None:
    with pytest.raises(ConfigError, match="RSTREAM_PRECISION=int8 runs on ONNX Runtime"):
        make_predictor("eager", tiny(), CPU, "int8", 3, settings=world["settings"])


def test_without_calibration_images_the_error_names_the_setting_and_the_command(
        world: Any) -> None:
    bare = make_settings(storage_root=world["settings"].storage_root)
    with pytest.raises(ConfigError, match=r"set RSTREAM_CALIBRATION.*rstream models quantize"):
        make_predictor("auto", tiny(), CPU, "int8", 3, settings=bare)


def test_the_default_set_is_the_validation_split_of_a_trained_version(world: Any) -> None:
    storage = Storage(world["settings"])
    meta = {"training": {"data": "calib", "config": {"val_percent": 80}}}
    split = quantize.validation_split(storage, meta, b"onnx")
    assert split is not None
    assert split.uris and all(is_validation(uri, 80) for uri in split.uris)
    assert len(split.uris) < 20  # some images are training ones
    assert quantize.validation_split(storage, {}, b"onnx") is None


def test_models_quantize_records_the_int8_model_in_the_meta(
        world: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = world["settings"]
    registry = Registry(Storage(settings), settings.models)
    version = save_model(registry, "tiny", tiny().module, arch="resnet18",
                         classes=[f"c{i}" for i in range(10)], preprocessing=SPEC)
    # The same weights as tiny(): its fp32 export, already cached, saves exporting again.
    (fp32,) = [path for path in (world["root"] / "cache" / "rstream" / "onnx").glob("*.onnx")
               if "int8" not in path.name]
    registry.storage.write(registry.version_uri("tiny", version, "model.onnx"),
                           fp32.read_bytes())
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RSTREAM_INT8_MIN_AGREEMENT", "0")

    assert cli(["models", "quantize", f"tiny@{version}", "--calibration", "calib"]) == 0

    out = capsys.readouterr().out
    assert "top-1 agreement with fp32" in out and "held-out images" in out
    recorded = registry.read_meta("tiny", version)["int8"]
    assert recorded["calibration"] == "calib" and len(recorded["key"]) == 16
    assert registry.storage.exists(registry.version_uri("tiny", version,
                                                        f"model-int8-{recorded['key']}.onnx"))
    # A worker with no calibration setting of its own loads what the command recorded.
    monkeypatch.setattr(quantize, "build", None)
    loaded = load_model(f"tiny@{version}", registry)
    served = make_predictor("auto", loaded, CPU, "int8", 3, registry=registry,
                            settings=make_settings(storage_root=settings.storage_root,
                                                   int8_min_agreement=0.0))
    assert served.precision == "int8"
