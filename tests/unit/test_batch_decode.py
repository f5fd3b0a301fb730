"""The batched decode path (RSTREAM_DECODE_DEVICE=cuda) run on the CPU, where CI has it: what it
is given, what it returns, and what happens to images it cannot take. Its top-1 agreement with
the reference is in tests/unit/test_decode_agreement.py; tests/unit/test_engine.py scores
through it."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import REGISTRY

from rstream.shared.errors import ConfigError, ImageError
from rstream.worker.model.batch_decode import (
    Raw,
    Staging,
    admit,
    decodes_in_batches,
    preprocess_batch,
)
from rstream.worker.model.loader import LoadedModel, build
from rstream.worker.model.predict import Predictor
from rstream.worker.model.preprocess import Preprocessing, decode_image, normalize
from rstream.worker.serving.batcher import Batcher
from tests.images import jpeg_bytes, oriented_bytes, photo, png_bytes

SPEC = Preprocessing(resize=72, crop=64)
LIMIT = 10_000_000
CPU = torch.device("cpu")


def rgb(name: str = "coffee", size: tuple[int, int] = (120, 90), **options: object) -> bytes:
    return jpeg_bytes(photo(name, size), **options)


def path_count(path: str) -> float:
    return REGISTRY.get_sample_value("rstream_decode_path_total", {"path": path}) or 0.0


def reference_batch(datas: list[bytes]) -> torch.Tensor:
    return normalize(torch.stack([decode_image(d, SPEC, LIMIT) for d in datas]), SPEC)


def test_the_setting_chooses_the_path_and_cuda_needs_a_cuda_model() -> None:
    assert not decodes_in_batches("auto", CPU), "auto is cpu until a GPU has measured cuda"
    assert not decodes_in_batches("cpu", CPU)
    assert decodes_in_batches("batched", CPU)
    with pytest.raises(ConfigError, match="RSTREAM_DECODE_DEVICE=cuda but the model serves on"):
        decodes_in_batches("cuda", CPU)
    with pytest.raises(ConfigError, match="use auto, cpu, cuda, batched"):
        decodes_in_batches("gpu", CPU)


@pytest.mark.parametrize("kind", ["rgb", "gray"])
def test_plain_jpegs_wait_for_the_device_decoder(kind: str) -> None:
    data = rgb() if kind == "rgb" else jpeg_bytes(photo("coffee", (120, 90)).convert("L"))
    assert admit(data, SPEC, LIMIT) == Raw(data, LIMIT)


@pytest.mark.parametrize("kind", ["png", "cmyk", "progressive", "exif"])
def test_what_the_device_decoder_is_not_given_is_decoded_on_the_cpu_now(kind: str) -> None:
    upright = photo("coffee", (120, 90))
    data = {"png": lambda: png_bytes(upright),
            "cmyk": lambda: jpeg_bytes(upright.convert("CMYK")),
            "progressive": lambda: rgb(progressive=True),
            "exif": lambda: oriented_bytes(upright, 6, fmt="JPEG")}[kind]()

    got = admit(data, SPEC, LIMIT)

    assert isinstance(got, torch.Tensor) and torch.equal(got, decode_image(data, SPEC, LIMIT))


def test_the_header_is_refused_as_the_cpu_decoder_refuses_it() -> None:
    with pytest.raises(ImageError, match="above the limit of 100"):
        admit(rgb(), SPEC, 100)
    with pytest.raises(ImageError, match="empty image"):
        admit(b"", SPEC, LIMIT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_batch_is_normalized_in_the_models_dtype_and_memory_format(
        dtype: torch.dtype) -> None:
    datas = [rgb("coffee"), rgb("astronaut", (90, 120)), rgb("chelsea", (300, 200))]

    batch, errors = preprocess_batch([Raw(d, LIMIT) for d in datas], SPEC, CPU, dtype=dtype)

    assert errors == [None, None, None]
    assert batch is not None and batch.dtype == dtype and batch.shape == (3, 3, 64, 64)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    # On the CPU it is the tensor path of decode_image, bit for bit, before the cast.
    assert torch.equal(batch, reference_batch(datas).to(dtype))


def test_one_undecodable_jpeg_fails_alone_and_the_rest_keep_their_order() -> None:
    good = [rgb("coffee"), rgb("astronaut"), rgb("chelsea"), rgb("rocket")]
    broken = good[1][:len(good[1]) // 2]  # the header parses, the pixels are cut short
    refused = rgb("camera")  # CPU-decoded in the fetch thread: a crop, not Raw
    items = [Raw(good[0], LIMIT), Raw(broken, LIMIT), decode_image(refused, SPEC, LIMIT),
             Raw(good[2], LIMIT), Raw(good[3], LIMIT)]
    device_before, fallback_before = path_count("device"), path_count("fallback")

    batch, errors = preprocess_batch(items, SPEC, CPU)

    assert [type(e).__name__ if e else None for e in errors] == \
        [None, "ImageError", None, None, None]
    assert "truncated JPEG image" in str(errors[1])
    assert batch is not None
    assert torch.equal(batch, reference_batch([good[0], refused, good[2], good[3]]))
    # split in halves until the bad one is alone: the three good JPEGs by the device decoder
    assert path_count("device") - device_before == 3
    assert path_count("fallback") - fallback_before == 0


def test_a_jpeg_the_device_decoder_refuses_alone_is_decoded_on_the_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A mock, for a fault this machine cannot cause: nvJPEG refusing a JPEG that libjpeg reads
    # (CPU decode_jpeg is libjpeg itself). It refuses the second image, batched or alone.
    from rstream.worker.model import batch_decode
    real = batch_decode.decode_jpeg
    datas = [rgb("coffee"), rgb("astronaut"), rgb("chelsea")]

    def nvjpeg_like(inputs: list[torch.Tensor], **kwargs: object) -> list[torch.Tensor]:
        if any(bytes(t.numpy()) == datas[1] for t in inputs):
            raise RuntimeError("nvjpegDecodeBatched failed: NVJPEG_STATUS_JPEG_NOT_SUPPORTED")
        return real(inputs, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(batch_decode, "decode_jpeg", nvjpeg_like)
    fallback_before = path_count("fallback")

    batch, errors = preprocess_batch([Raw(d, LIMIT) for d in datas], SPEC, CPU)

    assert errors == [None, None, None] and batch is not None
    assert torch.equal(batch, reference_batch(datas))
    assert path_count("fallback") - fallback_before == 1


def test_nothing_decodable_gives_no_batch_and_every_reason() -> None:
    data = rgb()
    batch, errors = preprocess_batch([Raw(data[:len(data) // 3], LIMIT)], SPEC, CPU)
    assert batch is None and isinstance(errors[0], ImageError)


def test_staging_on_the_cpu_stacks_without_a_copy_to_make() -> None:
    crops = [decode_image(rgb(), SPEC, LIMIT) for _ in range(3)]
    assert torch.equal(Staging(CPU).to_device(crops), torch.stack(crops))


def test_the_batcher_scores_raw_jpegs_and_crops_alike_and_fails_only_the_bad_one() -> None:
    torch.manual_seed(0)
    loaded = LoadedModel(build("resnet18", 10).eval(), "tiny@1", [f"c{i}" for i in range(10)],
                         SPEC, "resnet18")
    predictor = Predictor(loaded, CPU, "fp32", topk=3)
    datas = [rgb("coffee"), rgb("astronaut"), rgb("chelsea")]
    crops = [decode_image(d, SPEC, LIMIT) for d in datas]
    with Batcher(predictor, max_batch=8, max_delay_ms=200) as batcher:
        futures = batcher.submit([Raw(datas[0], LIMIT), crops[1], Raw(b"\xff\xd8" + datas[2][2:
                                  len(datas[2]) // 2], LIMIT), Raw(datas[2], LIMIT)])
        results = [f.exception() or f.result() for f in futures]
    expected = predictor.predict(torch.stack([crops[0], crops[1], crops[2]]))
    assert isinstance(results[2], ImageError)
    for got, want in zip([results[0], results[1], results[3]], expected, strict=True):
        assert not isinstance(got, BaseException)
        assert [e["index"] for e in got.top] == [e["index"] for e in want]
        assert got.top[0]["prob"] == pytest.approx(want[0]["prob"], abs=1e-5)
    assert batcher.stats()["batches"] == 1, "one batch: raw JPEGs and crops together"


def test_the_next_batch_is_decoded_while_the_previous_one_is_in_the_forward() -> None:
    import threading

    release, in_forward, prepared = threading.Event(), threading.Event(), threading.Event()

    class Slow(Predictor):
        """Its forward waits for the test; a real one would be busy on the device."""

        def prepare_items(self, items):  # type: ignore[no-untyped-def]
            out = super().prepare_items(items)
            if in_forward.is_set():
                prepared.set()
            return out

        def predict_prepared(self, batch, errors):  # type: ignore[no-untyped-def]
            in_forward.set()
            assert release.wait(30)
            return super().predict_prepared(batch, errors)

    torch.manual_seed(0)
    loaded = LoadedModel(build("resnet18", 10).eval(), "tiny@1", [f"c{i}" for i in range(10)],
                         SPEC, "resnet18")
    predictor = Slow(loaded, CPU, "fp32", topk=3)
    with Batcher(predictor, max_batch=2, max_delay_ms=1) as batcher:
        first = batcher.submit([Raw(rgb("coffee"), LIMIT)] * 2)
        assert in_forward.wait(30)
        second = batcher.submit([Raw(rgb("astronaut"), LIMIT)] * 2)
        try:
            assert prepared.wait(30), "the second batch waited for the first's forward"
            assert batcher.liveness(60)[1]["waiting_images"] == 2
        finally:
            release.set()
        assert all(f.result(30).top for f in first + second)
