"""RSTREAM_BACKEND=onnx: ONNX Runtime gives the eager predictor's answers, on the CPU only."""

from __future__ import annotations

import pytest
import torch

from rstream.shared.errors import ConfigError
from rstream.worker.model.loader import LoadedModel, load_model
from rstream.worker.model.onnx import OnnxPredictor, make_predictor
from rstream.worker.model.predict import Predictor
from rstream.worker.model.preprocess import Preprocessing

pytest.importorskip("onnxruntime", reason="the worker extra (onnxruntime) is not installed")

CPU = torch.device("cpu")


def small_model() -> LoadedModel:
    loaded = load_model("random:resnet18:classes=10:seed=4")
    loaded.preprocessing = Preprocessing(resize=72, crop=64)
    return loaded


def test_onnx_predictions_match_eager() -> None:
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    eager = Predictor(small_model(), CPU, "fp32", topk=5).predict(images)
    onnx = make_predictor("onnx", small_model(), CPU, "auto", 5)
    assert isinstance(onnx, OnnxPredictor)
    got = onnx.predict(images)
    assert len(got) == len(eager) == 6
    for mine, reference in zip(got, eager, strict=True):
        assert [t["index"] for t in mine] == [t["index"] for t in reference]
        for a, b in zip(mine, reference, strict=True):
            assert abs(a["prob"] - b["prob"]) < 1e-4
    assert onnx.model_id == "random:resnet18:classes=10:seed=4"


def test_onnx_on_cuda_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="RSTREAM_BACKEND=eager on CUDA"):
        OnnxPredictor(small_model(), torch.device("cuda"))
