"""Preprocessing: parity with torchvision's eval transform, refusals, EXIF, modes, threads."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from rstream.shared.errors import ConfigError, ImageError, PermanentError
from rstream.worker.model.loader import load_model
from rstream.worker.model.preprocess import (
    Preprocessing,
    choose_path,
    decode_image,
    draft_scale,
    normalize,
)
from tests.images import (
    animated_bytes,
    bomb_png,
    encode,
    eps_bytes,
    jpeg_bytes,
    oriented_bytes,
    pdf_bytes,
    photo,
    png_bytes,
    tiff_bytes,
)

SPEC = Preprocessing()
LIMIT = 64_000_000
PARITY_PHOTOS = ("astronaut", "coffee", "chelsea", "china")
LEVEL = 1 / 255 / min(SPEC.std)  # one uint8 level after normalization, about 0.0175
DRAFTED = (2732, 2048)  # the draft path decodes this at 1/2 scale, then resizes 4x
DRAFT_BOUNDS = (0.1, 0.005, 0.012)


def reference(data: bytes, spec: Preprocessing = SPEC, to_tensor: bool = True) -> torch.Tensor:
    """torchvision's eval transform on the full PIL decode (float, or uint8 when not to_tensor)."""
    interpolation = T.InterpolationMode(spec.interpolation)
    steps = [T.Resize(spec.resize, interpolation), T.CenterCrop(spec.crop)]
    steps += [T.ToTensor(), T.Normalize(spec.mean, spec.std)] if to_tensor else [T.PILToTensor()]
    return T.Compose(steps)(Image.open(io.BytesIO(data)).convert("RGB"))


def reference_u8(data: bytes, spec: Preprocessing = SPEC) -> torch.Tensor:
    return reference(data, spec, to_tensor=False)


def decode(data: bytes, path: str = "auto", spec: Preprocessing = SPEC) -> torch.Tensor:
    return decode_image(data, spec, LIMIT, path=path)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_model("random:resnet18").module.eval()


_JPEGS: dict[tuple[int, int], list[bytes]] = {}


def parity_jpegs(size: tuple[int, int]) -> list[bytes]:
    if size not in _JPEGS:
        _JPEGS[size] = [jpeg_bytes(photo(name, size)) for name in PARITY_PHOTOS]
    return _JPEGS[size]


def compare(model: torch.nn.Module, datas: list[bytes], path: str) -> dict[str, float]:
    expected = torch.stack([reference(d) for d in datas])
    ours = normalize(torch.stack([decode(d, path) for d in datas]), SPEC)
    with torch.inference_mode():
        logits_ref, logits = model(expected), model(ours)
    top_ref, top = logits_ref.topk(5).indices, logits.topk(5).indices
    return {
        "input_max": float((expected - ours).abs().max()),
        "input_mean": float((expected - ours).abs().mean()),
        "logits_max": float((logits_ref - logits).abs().max()),
        "same_top5_lists": sum(bool(torch.equal(a, b)) for a, b in zip(top_ref, top, strict=True)),
    }


# --- parity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(500, 375), (1920, 1080), (200, 150)])
def test_exact_path_is_bit_identical_to_torchvision_reference(model, size):
    got = compare(model, parity_jpegs(size), "exact")
    assert got == {"input_max": 0.0, "input_mean": 0.0, "logits_max": 0.0,
                   "same_top5_lists": len(PARITY_PHOTOS)}


# bounds = (input max, input mean, logits max). Measured here on the 4 photos: the tensor path
# is at most 1 level off (0.0175), mean 3e-5, logits 3e-4. The draft path (forced; at 2732x2048
# the DCT halves the image and a 4x resize remains) is at most 0.052 off (3 levels), mean
# 0.0026, logits 0.0059; the bounds are about twice that.
@pytest.mark.parametrize(("size", "path", "bounds"), [
    ((500, 375), "tensor", (LEVEL * 1.001, 1e-4, 1e-3)),
    ((200, 150), "tensor", (LEVEL * 1.001, 1e-4, 1e-3)),
    ((1920, 1080), "tensor", (LEVEL * 1.001, 1e-4, 1e-3)),
    (DRAFTED, "draft", DRAFT_BOUNDS),
])
def test_fast_paths_keep_their_pinned_parity(model, size, path, bounds):
    input_max, input_mean, logits_max = bounds
    got = compare(model, parity_jpegs(size), path)
    assert got["input_max"] <= input_max
    assert got["input_mean"] <= input_mean
    assert got["logits_max"] <= logits_max
    assert got["same_top5_lists"] == len(PARITY_PHOTOS)


def test_draft_path_is_not_a_silent_exact_decode():
    data = parity_jpegs(DRAFTED)[0]
    assert draft_scale(*DRAFTED, SPEC) == 2
    assert not torch.equal(decode(data, "draft"), decode(data, "exact"))


def blank_jpeg(size: tuple[int, int]) -> bytes:
    return jpeg_bytes(Image.new("RGB", size, (90, 120, 150)))


@pytest.mark.parametrize(("make", "spec", "expected"), [
    (lambda: jpeg_bytes(photo("china", (500, 375))), SPEC, "tensor"),
    (lambda: blank_jpeg((1920, 1080)), SPEC, "tensor"),
    (lambda: blank_jpeg((4000, 3000)), SPEC, "tensor"),  # never draft: see preprocess.py
    (lambda: jpeg_bytes(photo("camera", (680, 512))), SPEC, "tensor"),
    (lambda: jpeg_bytes(photo("china", (500, 375)).convert("CMYK")), SPEC, "exact"),
    (lambda: jpeg_bytes(photo("china", (500, 375))), Preprocessing(interpolation="bicubic"),
     "exact"),
    (lambda: jpeg_bytes(photo("china", (500, 375))), Preprocessing(resize=200, crop=224),
     "exact"),
    (lambda: png_bytes(photo("china", (1920, 1080))), SPEC, "exact"),
])
def test_choose_path_takes_the_fastest_path_that_fits(make, spec, expected):
    assert choose_path(Image.open(io.BytesIO(make())), spec) == expected


@pytest.mark.parametrize("spec", [
    Preprocessing(interpolation="bicubic"),
    Preprocessing(resize=201, crop=224),  # CenterCrop pads 11 rows above, 12 below
    Preprocessing(resize=160, crop=128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
])
def test_other_specs_match_their_reference_exactly(spec):
    data = jpeg_bytes(photo("chelsea", (451, 300)))
    ours = decode(data, "exact", spec)
    assert torch.equal(ours, reference_u8(data, spec))
    assert torch.equal(normalize(ours[None], spec)[0], reference(data, spec))


def test_normalize_casts_and_keeps_channels_last():
    batch = torch.stack([decode(d) for d in parity_jpegs((500, 375))[:2]])
    batch = batch.contiguous(memory_format=torch.channels_last)
    full, half = normalize(batch, SPEC), normalize(batch, SPEC, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert full.is_contiguous(memory_format=torch.channels_last)
    assert float((half.float() - full).abs().max()) <= 0.02
    assert float(full.mean()) == pytest.approx(float(normalize(batch.contiguous(), SPEC).mean()))


# --- refusals -------------------------------------------------------------------------------


def _corrupt_jpeg() -> bytes:
    data = jpeg_bytes(photo("china", (500, 375)))
    return data[:2000] + bytes(range(256)) * 4 + data[3024:]


def _corrupt_png() -> bytes:
    data = png_bytes(photo("china", (200, 150)))
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle:middle + 64]) + data[middle + 64:]


def _half(make: Callable[[], bytes]) -> Callable[[], bytes]:
    return lambda: (data := make())[:len(data) // 2]


@pytest.mark.parametrize(("make", "path", "reason"), [
    (lambda: b"", "auto", "empty image: the object has 0 bytes"),
    (lambda: b"just a line of text\n" * 20, "auto", "not an image: the data starts with b'just"),
    (lambda: bytes(range(256)) * 8, "auto", "not an image"),
    (eps_bytes, "auto", "image format EPS is not allowed"),
    (pdf_bytes, "auto", "image format PDF is not allowed"),
    (tiff_bytes, "auto", "image format TIFF is not allowed"),
    (lambda: bomb_png(100_000, 100_000), "auto",
     "declares 100000x100000 = 10000000000 pixels, above the limit of 64000000; raise "
     "RSTREAM_MAX_IMAGE_PIXELS"),
    (lambda: bomb_png(9_000, 9_000), "auto",
     "declares 9000x9000 = 81000000 pixels, above the limit of 64000000"),
    (_half(lambda: jpeg_bytes(photo("china", (500, 375)))), "tensor", "truncated JPEG image"),
    (_half(lambda: jpeg_bytes(photo("china", (500, 375)))), "exact", "truncated JPEG image"),
    (_half(lambda: jpeg_bytes(photo("china", (1920, 1080)))), "draft", "truncated JPEG image"),
    (lambda: jpeg_bytes(photo("china", (500, 375)))[:100], "auto", "truncated JPEG header"),
    (_half(lambda: png_bytes(photo("china", (200, 150)))), "auto", "truncated PNG image"),
    (_corrupt_jpeg, "tensor", "corrupt JPEG image"),
    (_corrupt_jpeg, "exact", "corrupt JPEG image"),
    (_corrupt_png, "auto", "corrupt PNG image"),
])
def test_refused_inputs_say_why(make, path, reason):
    with pytest.raises(ImageError, match=reason.replace("(", r"\(")) as caught:
        decode(make(), path)
    assert isinstance(caught.value, PermanentError)


def test_pixel_limit_applies_to_the_declared_size():
    data = png_bytes(photo("chelsea", (100, 80)))
    assert decode_image(data, SPEC, 8000).shape == (3, 224, 224)
    with pytest.raises(ImageError, match="100x80 = 8000 pixels, above the limit of 7999"):
        decode_image(data, SPEC, 7999)


def test_the_setting_governs_above_pillows_own_limit():
    # 15000 x 12000 = 180 M pixels: above Pillow's decompression-bomb limit (178,956,970).
    header_only = bomb_png(15_000, 12_000)
    with pytest.raises(ImageError, match="above the limit of 100000000; raise "
                                         "RSTREAM_MAX_IMAGE_PIXELS"):
        decode_image(header_only, SPEC, 100_000_000)
    with pytest.raises(ImageError) as caught:  # allowed: it is decoded, and its data is short
        decode_image(header_only, SPEC, 200_000_000)
    assert "RSTREAM_MAX_IMAGE_PIXELS" not in str(caught.value)
    assert "bomb" not in str(caught.value) and "truncated" in str(caught.value)


def test_fast_paths_need_a_jpeg():
    with pytest.raises(ValueError, match="needs a JPEG"):
        decode(png_bytes(photo("chelsea", (100, 80))), "tensor")


# --- EXIF orientation -----------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_png_tensor(orientation):
    upright = photo("coffee", (320, 240))
    assert torch.equal(decode(oriented_bytes(upright, orientation)), decode(png_bytes(upright)))


SMALL = Preprocessing(resize=64, crop=56)  # 800x600 drafts at 1/2 for it, leaving a 4x resize


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("path", "size", "spec"), [("tensor", (320, 240), SPEC),
                                                    ("draft", (800, 600), SMALL)])
def test_exif_orientation_is_applied_on_jpeg_fast_paths(path, size, spec, orientation):
    upright = photo("coffee", size)
    data = oriented_bytes(upright, orientation, "JPEG", quality=95)
    if path == "tensor":
        assert choose_path(Image.open(io.BytesIO(data)), spec) == path
    else:
        assert draft_scale(*size, spec) == 2
    expected = decode(jpeg_bytes(upright, quality=95), path, spec).float()
    got = decode(data, path, spec).float()
    assert float((got - expected).abs().mean()) < 1.5  # JPEG re-encoding only
    if orientation > 1:  # the test has power: ignoring the tag would be far off
        unrotated = decode(jpeg_bytes(Image.open(io.BytesIO(data)), quality=95), path, spec)
        assert float((unrotated.float() - expected).abs().mean()) > 10


# --- modes and animations -------------------------------------------------------------------


def _with_alpha(img: Image.Image) -> Image.Image:
    alpha = Image.linear_gradient("L").resize(img.size)
    img.putalpha(alpha)
    return img


def _palette_with_transparency() -> bytes:
    img = photo("chelsea", (300, 200)).convert("P", palette=Image.Palette.ADAPTIVE)
    return png_bytes(img, transparency=0)


@pytest.mark.parametrize(("make", "mode"), [
    (lambda: png_bytes(photo("camera", (300, 200))), "L"),
    (lambda: png_bytes(_with_alpha(photo("chelsea", (300, 200)))), "RGBA"),
    (lambda: png_bytes(_with_alpha(photo("camera", (300, 200)))), "LA"),
    (_palette_with_transparency, "P"),
    (lambda: jpeg_bytes(photo("chelsea", (300, 200)).convert("CMYK")), "CMYK"),
    (lambda: jpeg_bytes(photo("camera", (300, 200))), "L"),
    (lambda: encode(photo("chelsea", (300, 200)), "BMP"), "RGB"),
    (lambda: encode(photo("chelsea", (300, 200)).convert("1"), "BMP"), "1"),
    (lambda: encode(photo("chelsea", (300, 200)), "WEBP", lossless=True), "RGB"),
])
def test_modes_decode_like_convert_rgb(make, mode):
    data = make()
    assert Image.open(io.BytesIO(data)).mode == mode
    got = decode(data)
    assert got.shape == (3, 224, 224) and got.dtype == torch.uint8
    tolerance = 1 if choose_path(Image.open(io.BytesIO(data)), SPEC) == "tensor" else 0
    assert int((got.int() - reference_u8(data).int()).abs().max()) <= tolerance


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    gray = np.asarray(photo("camera", (300, 200)))
    data = png_bytes(Image.fromarray(gray.astype(np.uint16) * 257))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    got = decode(data)
    assert torch.equal(got, decode(png_bytes(Image.fromarray(gray))))
    assert int(got.min()) < 50  # Pillow's own convert("RGB") would make it all 255


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animations_give_their_first_frame(fmt):
    first, second = photo("chelsea", (300, 200)), photo("coffee", (300, 200))
    data = animated_bytes([first, second], fmt)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    got = decode(data)
    assert torch.equal(got, reference_u8(data))
    still = decode(png_bytes(first)).float()
    other = decode(png_bytes(second)).float()
    assert float((got.float() - still).abs().mean()) < 5 < float((got.float() - other).abs().mean())


# --- threads --------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
@pytest.mark.parametrize(("path", "size"), [("exact", (500, 375)), ("tensor", (500, 375)),
                                            ("draft", (1920, 1080))])
def test_decode_threads_start_no_intra_op_threads(path, size):
    data = jpeg_bytes(photo("china", size))
    barrier = threading.Barrier(5)

    def work() -> None:
        for _ in range(3):
            decode(data, path)
        barrier.wait()
        barrier.wait()

    before = len(os.listdir("/proc/self/task"))
    workers = [threading.Thread(target=work) for _ in range(4)]
    for worker in workers:
        worker.start()
    barrier.wait()
    during = len(os.listdir("/proc/self/task"))
    barrier.wait()
    for worker in workers:
        worker.join()
    assert during <= before + 4


# --- the spec -------------------------------------------------------------------------------


def test_spec_round_trips_and_refuses_unknown_interpolation():
    spec = Preprocessing(resize=232, crop=224, interpolation="bicubic")
    assert Preprocessing.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="use one of nearest"):
        Preprocessing(interpolation="cubic")
    with pytest.raises(ConfigError, match="std non-zero"):
        Preprocessing(std=(0.2, 0.0, 0.2))


@pytest.mark.parametrize("size", [(3, 32, 32), (3, 32, 45), (3, 256, 301)])
def test_resize_crop_of_an_image_at_its_resized_size_equals_torchvision_resize_then_crop(
        size: tuple[int, int, int]) -> None:
    # resize_crop skips the resize when the shorter side is already the target: the same
    # pixels as torchvision's antialiased resize at that size followed by the center crop.
    from torchvision.transforms.v2 import functional as F

    from rstream.worker.model.preprocess import resize_crop

    seeded = torch.Generator().manual_seed(5)
    pixels = torch.randint(0, 256, size, dtype=torch.uint8, generator=seeded)
    spec = Preprocessing(resize=min(size[1:]), crop=min(size[1:]) - 2)
    expected = F.center_crop(F.resize(pixels, [size[1], size[2]], antialias=True), [spec.crop])
    assert torch.equal(resize_crop(pixels, spec), expected)
