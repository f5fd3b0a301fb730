"""Predictor: top-k with labels, one output per input in order, and the out-of-memory split."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from torch import nn

from rstream.shared.errors import ConfigError, ModelError
from rstream.worker.model.device import resolve_device
from rstream.worker.model.loader import LoadedModel, load_model
from rstream.worker.model.predict import Predictor, autocast_dtype
from rstream.worker.model.preprocess import Preprocessing, normalize

SMALL = Preprocessing(resize=72, crop=64)
CPU = torch.device("cpu")


def small_model(seed: int = 0, module: nn.Module | None = None) -> LoadedModel:
    loaded = load_model(f"random:resnet18:classes=10:seed={seed}")
    return dataclasses.replace(loaded, preprocessing=SMALL, module=module or loaded.module)


def distinct_images(n: int, size: int = 64) -> torch.Tensor:
    """Images that differ in colour and texture, so that their predictions differ too."""
    g = torch.Generator().manual_seed(7)
    base = torch.randint(0, 256, (n, 3, 1, 1), generator=g)
    noise = torch.randint(-40, 40, (n, 3, size, size), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8)


def reference_probs(loaded: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    """Softmax of the plain module on the normalized batch, the textbook way."""
    with torch.no_grad():
        return torch.softmax(loaded.module(normalize(images, SMALL).contiguous()), dim=1)


class OomAbove(nn.Module):
    """Raises CUDA's out-of-memory error for batches above ``limit`` images.

    A mock by necessity: a real CUDA out-of-memory error cannot be caused on a CPU machine.
    """

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by the test)")
        return self.inner(x)


class DropsLastRow(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[:-1]


def test_topk_lists_k_labelled_classes_best_first() -> None:
    predictor = Predictor(small_model(), CPU, "auto", topk=3)
    tops = predictor.predict(distinct_images(4))
    assert len(tops) == 4
    for top in tops:
        assert len(top) == 3
        assert [entry["label"] for entry in top] == [f"class_{e['index']}" for e in top]
        probs = [entry["prob"] for entry in top]
        assert probs == sorted(probs, reverse=True)
        assert len({entry["index"] for entry in top}) == 3


def test_probabilities_over_all_classes_sum_to_one() -> None:
    predictor = Predictor(small_model(), CPU, "fp32", topk=100)  # more than the 10 classes
    tops = predictor.predict(distinct_images(3))
    for top in tops:
        assert len(top) == 10
        assert sum(entry["prob"] for entry in top) == pytest.approx(1.0, abs=1e-5)


def test_each_output_belongs_to_its_own_input_in_order() -> None:
    loaded = small_model()
    images = distinct_images(6)
    expected = reference_probs(loaded, images)
    # The images must be told apart by their predictions, or order would not be tested.
    assert torch.cdist(expected, expected).fill_diagonal_(1).min() > 1e-3
    tops = Predictor(loaded, CPU, "auto", topk=10).predict(images)
    for row, top in zip(expected, tops, strict=True):
        got = torch.zeros(10)
        for entry in top:
            got[entry["index"]] = entry["prob"]
        torch.testing.assert_close(got, row, atol=1e-5, rtol=0)


def test_a_model_that_returns_the_wrong_number_of_rows_is_refused() -> None:
    loaded = small_model()
    predictor = Predictor(small_model(module=DropsLastRow(loaded.module)), CPU)
    with pytest.raises(ModelError, match="for 4 images"):
        predictor.predict(distinct_images(4))


def test_out_of_memory_splits_the_batch_and_gives_the_unsplit_results(
        caplog: pytest.LogCaptureFixture) -> None:
    loaded = small_model()
    images = distinct_images(10)
    unsplit = Predictor(loaded, CPU, "fp32", topk=10).predict(images)
    wrapper = OomAbove(loaded.module, limit=3)
    predictor = Predictor(small_model(module=wrapper), CPU, "fp32", topk=10)
    with caplog.at_level(logging.WARNING, logger="rstream.worker.model.predict"):
        split = predictor.predict(images)
    assert [[e["index"] for e in top] for top in split] == \
        [[e["index"] for e in top] for top in unsplit]
    for a, b in zip(split, unsplit, strict=True):
        assert [e["prob"] for e in a] == pytest.approx([e["prob"] for e in b], abs=1e-5)
    assert predictor.cap == 3  # 10 -> 5 + 5 -> 3 + 2 each
    assert len(caplog.records) == 1 and "capped at 3" in caplog.records[0].getMessage()

    wrapper.sizes.clear()
    caplog.clear()
    predictor.predict(images)
    assert max(wrapper.sizes) == 3  # the cap holds: no second try at the failing size
    assert sum(wrapper.sizes) == 10
    assert not caplog.records


def test_out_of_memory_on_a_single_image_is_raised() -> None:
    loaded = small_model()
    predictor = Predictor(small_model(module=OomAbove(loaded.module, limit=0)), CPU)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        predictor.predict(distinct_images(2))


def test_model_is_kept_in_channels_last() -> None:
    predictor = Predictor(small_model(), CPU)
    weight = predictor.module.get_parameter("conv1.weight")
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_precision_auto_is_fp32_on_cpu_and_fp16_on_cuda() -> None:
    assert autocast_dtype("auto", CPU) is None
    assert autocast_dtype("auto", torch.device("cuda")) == torch.float16
    assert autocast_dtype("bf16", CPU) == torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda")) is None


def test_bf16_autocast_on_cpu_agrees_with_fp32_on_the_best_class() -> None:
    loaded = small_model()
    images = distinct_images(4)
    fp32 = Predictor(loaded, CPU, "fp32", topk=1).predict(images)
    bf16 = Predictor(loaded, CPU, "bf16", topk=1).predict(images)
    assert [t[0]["index"] for t in bf16] == [t[0]["index"] for t in fp32]
    assert [t[0]["prob"] for t in bf16] == pytest.approx([t[0]["prob"] for t in fp32], abs=0.02)


def test_device_cpu_and_auto_without_cuda_resolve_to_the_cpu() -> None:
    assert resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU


@pytest.mark.parametrize("setting", ["cuda", "cuda:99"])
def test_asking_for_a_cuda_device_that_is_absent_names_the_setting(setting: str) -> None:
    if setting == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="RSTREAM_DEVICE"):
        resolve_device(setting)


@pytest.mark.gpu
def test_cuda_fp16_agrees_with_cpu_fp32_from_pinned_batches() -> None:
    images = distinct_images(16)
    cpu = Predictor(small_model(), CPU, "fp32", topk=10).predict(images)
    predictor = Predictor(small_model(), torch.device("cuda"), "auto", topk=10)
    assert predictor.dtype == torch.float16
    batch = predictor.collate(list(images))
    assert batch.is_pinned()
    gpu = predictor.predict(batch)
    assert [t[0]["index"] for t in gpu] == [t[0]["index"] for t in cpu]
    for a, b in zip(gpu, cpu, strict=True):
        assert as_vector(a) == pytest.approx(as_vector(b), abs=1e-2)


@pytest.mark.gpu
def test_a_real_cuda_out_of_memory_splits_the_batch_and_caps_it() -> None:
    cuda = torch.device("cuda")
    predictor = Predictor(small_model(), cuda, "fp16", topk=10)
    images = distinct_images(2048, size=224)
    expected = [top for i in range(0, 2048, 128) for top in predictor.predict(images[i:i + 128])]
    assert predictor.cap is None
    torch.cuda.empty_cache()
    limit = 3 * 2**30  # 2048 images at 224 px need about 8 GiB in resnet18's first layers
    torch.cuda.set_per_process_memory_fraction(
        limit / torch.cuda.get_device_properties(cuda).total_memory)
    try:
        got = predictor.predict(images)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert predictor.cap is not None and predictor.cap < 2048
    for a, b in zip(got, expected, strict=True):
        assert as_vector(a) == pytest.approx(as_vector(b), abs=1e-2)


def as_vector(top: list[dict[str, object]]) -> list[float]:
    row = [0.0] * 10
    for entry in top:
        row[int(entry["index"])] = float(entry["prob"])  # type: ignore[call-overload, arg-type]
    return row
