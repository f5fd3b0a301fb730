"""Batcher: concurrent callers get their own results, batches stay bounded and unmixed."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence

import pytest
import torch

from rstream.shared.errors import ImageError
from rstream.worker.model.loader import LoadedModel, load_model
from rstream.worker.model.predict import Predictor, Top
from rstream.worker.model.preprocess import Preprocessing
from rstream.worker.serving.batcher import Batcher, BatcherClosed, Prediction

SMALL = Preprocessing(resize=40, crop=32)
CPU = torch.device("cpu")


def loaded_model(seed: int) -> LoadedModel:
    loaded = load_model(f"random:resnet18:classes=10:seed={seed}")
    return dataclasses.replace(loaded, preprocessing=SMALL)


class RecordingPredictor(Predictor):
    """A real predictor that records each batch it runs, and can fail or hold one on demand."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(loaded_model(seed), CPU, "fp32", topk=10)
        self.batches: list[list[int]] = []  # per batch, the marker pixel of each image
        self.fail_marker: int | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def predict(self, images: torch.Tensor) -> list[Top]:
        markers = [int(m) for m in images[:, 0, 0, 0]]
        self.batches.append(markers)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_marker in markers:
            raise RuntimeError("forward failed (injected by the test)")
        return super().predict(images)


def images_with_markers(markers: Sequence[int]) -> list[torch.Tensor]:
    """Distinct images whose first pixel carries a marker, so batches can be traced."""
    out = []
    for marker in markers:
        g = torch.Generator().manual_seed(marker)
        image = torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8)
        image[0, 0, 0] = marker
        out.append(image)
    return out


def probs(top: Top) -> list[float]:
    row = [0.0] * 10
    for entry in top:
        row[entry["index"]] = entry["prob"]
    return row


@pytest.fixture(scope="module")
def plain() -> Predictor:
    return Predictor(loaded_model(0), CPU, "fp32", topk=10)


def test_concurrent_callers_each_get_their_own_results_in_order(plain: Predictor) -> None:
    per_thread = [images_with_markers(range(t * 12, t * 12 + 12)) for t in range(8)]
    results: dict[int, list[Prediction]] = {}

    def caller(t: int) -> None:
        futures = []
        for start in range(0, 12, 4):  # three submissions per thread
            futures += batcher.submit(per_thread[t][start:start + 4])
        results[t] = [f.result(timeout=60) for f in futures]

    with Batcher(plain, max_batch=16, max_delay_ms=20) as batcher:
        threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert batcher.stats()["mean_batch"] > 1  # the callers' images were batched together

    for t, images in enumerate(per_thread):
        expected = plain.predict(torch.stack(images))
        assert len(results[t]) == 12
        for got, want in zip(results[t], expected, strict=True):
            assert got.model_id == plain.model_id
            assert probs(got.top) == pytest.approx(probs(want), abs=1e-5)
    distinct = {tuple(round(p, 3) for p in probs(top)) for top in plain.predict(
        torch.stack([im for images in per_thread for im in images]))}
    assert len(distinct) == 96  # every image is recognisable by its result


def test_no_batch_exceeds_max_batch() -> None:
    predictor = RecordingPredictor()
    with Batcher(predictor, max_batch=8, max_delay_ms=50) as batcher:
        futures = []
        threads = [threading.Thread(target=lambda t=t: futures.extend(
            batcher.submit(images_with_markers(range(t * 13, t * 13 + 13))))) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for future in futures:
            future.result(timeout=60)
    sizes = [len(batch) for batch in predictor.batches]
    assert sum(sizes) == 52
    assert max(sizes) == 8


def test_a_batch_waits_up_to_max_delay_to_fill() -> None:
    predictor = RecordingPredictor()
    with Batcher(predictor, max_batch=8, max_delay_ms=500) as batcher:
        first = batcher.submit(images_with_markers([1]))
        time.sleep(0.05)
        assert not first[0].done()
        second = batcher.submit(images_with_markers([2]))
        started = time.monotonic()
        second[0].result(timeout=10)
        assert time.monotonic() - started < 5
    assert predictor.batches == [[1, 2]]


def test_a_failing_forward_fails_only_its_own_batch() -> None:
    predictor = RecordingPredictor()
    predictor.fail_marker = 7
    with Batcher(predictor, max_batch=4, max_delay_ms=1000) as batcher:
        before = batcher.submit(images_with_markers([1, 2, 3, 4]))
        failing = batcher.submit(images_with_markers([5, 6, 7, 8]))
        after = batcher.submit(images_with_markers([9, 10, 11, 12]))
    assert predictor.batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    for future in failing:
        with pytest.raises(RuntimeError, match="injected"):
            future.result()
    assert all(len(f.result().top) == 10 for f in before + after)
    assert batcher.stats()["failed_batches"] == 1


def test_swap_applies_to_later_submissions_and_batches_never_mix() -> None:
    old, new = RecordingPredictor(seed=0), RecordingPredictor(seed=1)
    old.gate = threading.Event()
    with Batcher(old, max_batch=8, max_delay_ms=1000) as batcher:
        running = batcher.submit(images_with_markers(range(1, 9)))  # a full batch, held
        assert old.entered.wait(10)
        queued_old = batcher.submit(images_with_markers([11, 12, 13]))
        assert batcher.swap(new) is old
        queued_new = batcher.submit(images_with_markers([21, 22, 23]))
        old.gate.set()
    assert old.batches == [list(range(1, 9)), [11, 12, 13]]
    assert new.batches == [[21, 22, 23]]
    plain_old = old.predict(torch.stack(images_with_markers([11, 12, 13])))
    plain_new = new.predict(torch.stack(images_with_markers([21, 22, 23])))
    for future, want in zip(queued_old, plain_old, strict=True):
        assert future.result().model_id == old.model_id
        assert probs(future.result().top) == pytest.approx(probs(want), abs=1e-5)
    for future, want in zip(queued_new, plain_new, strict=True):
        assert future.result().model_id == new.model_id
        assert probs(future.result().top) == pytest.approx(probs(want), abs=1e-5)
    assert all(f.done() for f in running)


def test_close_drains_everything_submitted_without_waiting_for_the_delay() -> None:
    predictor = RecordingPredictor()
    batcher = Batcher(predictor, max_batch=8, max_delay_ms=60_000)
    futures = batcher.submit(images_with_markers(range(20)))
    started = time.monotonic()
    batcher.close()
    assert time.monotonic() - started < 30
    assert all(f.done() and len(f.result().top) == 10 for f in futures)
    stats = batcher.stats()
    assert (stats["images"], stats["batches"]) == (20, 3)
    with pytest.raises(BatcherClosed):
        batcher.submit(images_with_markers([1]))


def test_an_image_of_the_wrong_shape_fails_alone(plain: Predictor) -> None:
    good = images_with_markers([1, 2])
    wrong = torch.zeros(3, 16, 16, dtype=torch.uint8)
    with Batcher(plain, max_batch=8, max_delay_ms=10) as batcher:
        futures = batcher.submit([good[0], wrong, good[1]])
    with pytest.raises(ImageError, match="does not fit"):
        futures[1].result()
    assert futures[0].result().model_id == futures[2].result().model_id == plain.model_id
