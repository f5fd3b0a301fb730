"""The decode path each image gets keeps torchvision's reference top-1 class, as seen by a probe
whose classes spread (tests/probe.py), on a small sample per size. The full measurement (300
photos per size, five probes) is bench/decode_agreement.py; docs/images.md quotes it."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from PIL import Image

from rstream.worker.model import preprocess
from rstream.worker.model.batch_decode import Raw, preprocess_batch
from rstream.worker.model.loader import load_model
from rstream.worker.model.preprocess import Preprocessing, choose_path, decode_image, normalize
from tests.probe import Probe, probe_jpegs, reference

SPEC = Preprocessing()
LIMIT = 64_000_000
SAMPLE = {(500, 375): 16, (1024, 768): 16, (1920, 1080): 24, (4000, 3000): 8}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sample() -> dict[str, Any]:
    """The JPEGs of each size, their reference inputs, and a probe fitted on all of them."""
    datas = {size: probe_jpegs(count, size) for size, count in SAMPLE.items()}
    references = {size: torch.stack([reference(d) for d in batch])
                  for size, batch in datas.items()}
    probe = Probe(torch.cat(list(references.values())))
    expected = {size: probe.top1(batch) for size, batch in references.items()}
    return {"datas": datas, "references": references, "probe": probe, "expected": expected}


def decoded(datas: list[bytes], path: str = "auto") -> torch.Tensor:
    return normalize(torch.stack([decode_image(d, SPEC, LIMIT, path=path) for d in datas]), SPEC)


def test_the_probe_spreads_where_a_random_resnet_does_not(sample: dict[str, Any]) -> None:
    inputs = torch.cat(list(sample["references"].values()))
    with torch.inference_mode():
        random_top1 = load_model("random:resnet18").module.eval()(inputs).argmax(1)
    assert len(set(sample["probe"].top1(inputs).tolist())) >= 15  # 19 of 64 images here
    assert len(set(random_top1.tolist())) <= 3


@pytest.mark.parametrize("size", list(SAMPLE))
def test_the_chosen_path_keeps_the_reference_top1_class(sample: dict[str, Any],
                                                        size: tuple[int, int]) -> None:
    datas = sample["datas"][size]
    assert choose_path(Image.open(io.BytesIO(datas[0])), SPEC) == "tensor"

    got = sample["probe"].top1(decoded(datas))

    assert got.tolist() == sample["expected"][size].tolist()


def test_the_probe_sees_what_the_old_draft_target_changed(
        sample: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # Before issue 17, 1920x1080 JPEGs took the draft path, decoded just above the resize
    # target (a margin of 1); the bench measured about 1 in 10 top-1 classes changed.
    monkeypatch.setattr(preprocess, "DRAFT_MIN_RESIZE", 1)
    size = (1920, 1080)

    got = sample["probe"].top1(decoded(sample["datas"][size], "draft"))

    assert (got != sample["expected"][size]).sum() >= 1


@pytest.mark.parametrize("size", [(500, 375), (1920, 1080)])
def test_the_batched_device_path_keeps_the_reference_top1_class(sample: dict[str, Any],
                                                                size: tuple[int, int]) -> None:
    # RSTREAM_DECODE_DEVICE=cuda's code, run on the CPU (bench/gpu_e2e.sh runs it on a GPU)
    raws = [Raw(data, LIMIT) for data in sample["datas"][size]]
    batch, errors = preprocess_batch(raws, SPEC, torch.device("cpu"),
                                     memory_format=torch.contiguous_format)

    assert errors == [None] * len(raws) and batch is not None
    assert sample["probe"].top1(batch).tolist() == sample["expected"][size].tolist()
