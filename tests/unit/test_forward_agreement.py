"""The forward agreement certificate on a small sample: ONNX Runtime fp32 and the compiled
forward keep every fp32 eager top-1 class of a probe whose classes spread, int8 nearly all;
the full run (300 photos, three probes) is bench/forward_agreement.py, quoted in the README."""

from __future__ import annotations

from typing import Any

import pytest

from bench.forward_agreement import decoded, measure
from rstream.worker.model.preprocess import Preprocessing

pytest.importorskip("onnxruntime", reason="the worker extra (onnxruntime) is not installed")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = Preprocessing(resize=72, crop=64)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    return measure(decoded(32, 0, SPEC), decoded(16, 1, SPEC), SPEC, probes=1,
                   variants=["ort_fp32", "ort_int8", "compile"], device=torch.device("cpu"),
                   compile_backend="aot_eager")


def test_the_probe_spreads_its_classes(report: dict[str, Any]) -> None:
    assert report["reference_top1_classes_per_probe"][0] >= 10


def test_onnx_fp32_and_the_compiled_forward_keep_every_top1_class(
        report: dict[str, Any]) -> None:
    for name in ("ort_fp32", "compile"):
        row = report["results"][name]
        assert row["fewest"] == row["images"] == 32, name
        assert row["max_prob_diff"] < 1e-3, name


def test_int8_keeps_most_top1_classes_and_says_how_far_probabilities_move(
        report: dict[str, Any]) -> None:
    row = report["results"]["ort_int8"]
    assert row["agreement"] >= 0.8
    assert 0 < row["max_prob_diff"] < 0.5  # quantized: the probabilities do move
