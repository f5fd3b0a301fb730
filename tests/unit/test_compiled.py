"""RSTREAM_FORWARD=compile|cudagraphs: batches run at bucket sizes, padded, with the eager
forward's answers; the warm-up is timed per bucket and shown; CUDA graphs need CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rstream.shared.errors import ConfigError
from rstream.worker.model import compiled
from rstream.worker.model.compiled import CompiledPredictor, bucket_for, buckets, pad
from rstream.worker.model.loader import LoadedModel
from rstream.worker.model.onnx import make_predictor
from rstream.worker.model.predict import Predictor
from rstream.worker.model.preprocess import Preprocessing
from rstream.worker.runtime.warmup import Warmup
from tests.settings import make_settings

CPU = torch.device("cpu")


def tiny() -> LoadedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    return LoadedModel(module, "tiny", [f"c{i}" for i in range(10)],
                       Preprocessing(resize=20, crop=16), "resnet18")


def test_buckets_are_max_batch_and_its_quarters_down_to_one() -> None:
    assert buckets(256) == (1, 4, 16, 64, 256)
    assert buckets(64) == (1, 4, 16, 64)
    assert buckets(100) == (1, 6, 25, 100)
    assert buckets(1) == (1,)
    assert [bucket_for(n, buckets(64)) for n in (1, 2, 4, 5, 16, 17, 64)] == \
        [1, 4, 4, 16, 16, 64, 64]
    with pytest.raises(ValueError, match="exceed the largest bucket"):
        bucket_for(65, buckets(64))


def test_padding_appends_zero_rows_and_keeps_the_rows() -> None:
    x = torch.rand(3, 3, 4, 4)
    padded = pad(x, 8)
    assert padded.shape == (8, 3, 4, 4)
    assert torch.equal(padded[:3], x) and not padded[3:].any()
    assert pad(x, 3) is x


def test_the_compiled_forward_gives_the_eager_answers_at_every_batch_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    shapes: list[int] = []
    predictor = CompiledPredictor(tiny(), CPU, "fp32", 3, forward="compile", max_batch=16,
                                  compile_backend="aot_eager")
    assert predictor.warmup["buckets"] == [1, 4, 16]
    assert set(predictor.warmup["per_bucket_s"]) == {"1", "4", "16"}
    runs = dict(predictor._runs)
    for size, run in runs.items():  # every forward runs at a bucket's size
        def spy(x: torch.Tensor, run=run, size=size) -> torch.Tensor:
            assert len(x) == size
            shapes.append(size)
            return run(x)
        predictor._runs[size] = spy
    eager = Predictor(tiny(), CPU, "fp32", 3)
    images = torch.randint(0, 256, (37, 3, 16, 16), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(3))
    for count in (1, 3, 5, 16, 37):
        got, want = predictor.predict(images[:count]), eager.predict(images[:count])
        assert [[t["index"] for t in top] for top in got] == \
            [[t["index"] for t in top] for top in want]
        assert max(abs(a["prob"] - b["prob"]) for g, w in zip(got, want, strict=True)
                   for a, b in zip(g, w, strict=True)) < 1e-5
    assert shapes == [1, 4, 16, 16, 16, 16, 16]  # 5 and 37 = 16 + 16 + 5 pad up to 16


def test_the_setting_picks_the_compiled_forward_and_readyz_shows_its_warmup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = compiled.CompiledPredictor.__init__

    def fast(self: CompiledPredictor, *args: object, **kwargs: object) -> None:
        real(self, *args, **{**kwargs, "compile_backend": "aot_eager"})  # type: ignore[arg-type]

    monkeypatch.setattr(compiled.CompiledPredictor, "__init__", fast)
    settings = make_settings(forward="compile", max_batch=4)
    predictor = make_predictor("auto", tiny(), CPU, "fp32", 3, settings=settings)
    assert isinstance(predictor, CompiledPredictor) and predictor.buckets == (1, 4)
    warmup = Warmup(lambda ref: predictor, "tiny")
    warmup.tick()
    ok, state = warmup.status()
    assert ok and state.startswith("loaded tiny (forward compile, warm-up ")
    assert "buckets 1, 4" in state


def test_cuda_graphs_on_the_cpu_and_compile_with_onnx_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="RSTREAM_FORWARD=cudagraphs needs CUDA"):
        CompiledPredictor(tiny(), CPU, "fp32", 3, forward="cudagraphs")
    with pytest.raises(ConfigError, match="use RSTREAM_BACKEND=auto or eager with it"):
        make_predictor("onnx", tiny(), CPU, "fp32", 3, settings=make_settings(forward="compile"))
