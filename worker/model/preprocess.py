"""Image bytes -> the model's input tensor, with the ImageNet eval recipe by default.

The reference is torchvision's eval transform on ``Image.open(...).convert("RGB")``:
``Resize(resize)`` (shorter side, antialiased) -> ``CenterCrop(crop)`` -> ``ToTensor`` ->
``Normalize(mean, std)``. It is split in two halves: :func:`decode_image` (bytes -> uint8
``[3, crop, crop]``, run in decode threads) and :func:`normalize` (a uint8 batch -> float, run by
the predictor on the device).

Decode paths; :func:`choose_path` picks one per image, ``decode_image(path=...)`` forces one:

- ``exact``: PIL decodes the whole image, resizes it with PIL and crops; bit-identical to the
  reference. Used for every non-JPEG, CMYK JPEGs, non-bilinear specs, and ``crop > resize``
  (zero padding, as torchvision's ``CenterCrop`` does).
- ``tensor``: ``torchvision.io.decode_jpeg`` (EXIF orientation applied) and torchvision's uint8
  antialiased bilinear resize. RGB or grayscale JPEGs of any size under a bilinear spec.
  Pixels within one uint8 level of the reference, and its top-1 class on at least 99% of the
  photos of each size measured (bench/decode_agreement.py, docs/images.md). (torchvision
  0.29 deprecates its image decoders in favour of TorchCodec; pyproject pins 0.29.)
- ``draft``: PIL's JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale (the smallest DCT scale
  that leaves at least a ``DRAFT_MIN_RESIZE`` x bilinear resize after it), then PIL resizes
  straight into the crop. Only when forced: even with a 4x margin it kept the reference's top-1
  class on fewer than 99% of large photos for some probes (docs/images.md), and smaller
  margins do worse.

Modes become RGB the way the reference loader does it (``convert("RGB")``: alpha is dropped,
palettes expanded, CMYK converted), except 16-bit grayscale, which Pillow would clip at 255:
it is scaled to 8 bits (``value >> 8``). Animated GIF / WebP give their first frame. EXIF
orientation is applied on every path (the reference loader ignores it).

Refused with :class:`ImageError`, whose message says why: empty, truncated, corrupt, not an
image, a format outside :data:`ALLOWED_FORMATS` (PIL is only ever offered these, so it never
parses EPS or PDF), and a declared size above ``max_pixels`` (checked on the header, before any
pixel is decoded).

Threads: decoding runs in many threads at once. PIL, ``decode_jpeg`` and torchvision's uint8
resize release the GIL and use one core each (measured: they start no thread). The copies are
done by numpy, because a torch copy of a whole image in a fresh thread starts an OpenMP team of
its own (one thread per core, per decode thread); a test counts the threads.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from rstream.shared.constants import IMAGE_FORMATS
from rstream.shared.errors import ConfigError, ImageError

# RSTREAM_MAX_IMAGE_PIXELS governs, checked on the header in _open on every path: Pillow's own
# decompression-bomb limit (2 x 89 M pixels) would otherwise refuse larger images whatever the
# setting says, with a message that does not name it.
Image.MAX_IMAGE_PIXELS = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ALLOWED_FORMATS = IMAGE_FORMATS
PATHS = ("exact", "tensor", "draft")
# The draft path decodes at a DCT scale that leaves at least this much shrinking to the bilinear
# resize: a drafted image just above the target leaves the smoothing to the 4- or 8-pixel DCT
# downscale, which changed top-1 classes (bench/decode_agreement.py measures each target).
DRAFT_MIN_RESIZE = 4

# torchvision's InterpolationMode values -> PIL filters (torchvision's own mapping for PIL input).
_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees
# What Pillow's decoders raise on malformed data (its own fuzzers catch the same list).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
                  RuntimeError)
_MAGIC_OUTSIDE_PIL = {b"%PDF": "PDF"}  # formats Pillow cannot read, so cannot name


@dataclass(frozen=True)
class Preprocessing:
    """The eval transform a model expects; stored in its meta.json."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.resize < 1 or self.crop < 1:
            raise ConfigError(f"preprocessing resize={self.resize} crop={self.crop}: "
                              "use positive sizes")
        if self.interpolation not in _PIL_FILTERS:
            raise ConfigError(f"preprocessing interpolation {self.interpolation!r}: use one of "
                              f"{', '.join(_PIL_FILTERS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or 0 in self.std:
            raise ConfigError("preprocessing mean and std: use three values each, std non-zero")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            resize=int(data["resize"]),
            crop=int(data["crop"]),
            mean=tuple(float(x) for x in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in data["std"]),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", "bilinear")),
        )


def decode_image(data: bytes, spec: Preprocessing, max_pixels: int, *,
                 path: str = "auto") -> torch.Tensor:
    """Image bytes -> uint8 ``[3, spec.crop, spec.crop]``: resized, center-cropped, RGB.

    ``path`` is ``auto`` (see :func:`choose_path`) or one of :data:`PATHS` to force it;
    ``tensor`` and ``draft`` need a JPEG. Raises :class:`ImageError` saying why it refused.
    """
    return decode_opened(read_header(data, max_pixels), data, spec, path=path)


def decode_opened(img: Image.Image, data: bytes, spec: Preprocessing, *,
                  path: str = "auto") -> torch.Tensor:
    """:func:`decode_image` of an image whose header :func:`read_header` already read."""
    if path == "auto":
        path = choose_path(img, spec)
    elif path not in PATHS:
        raise ValueError(f"path {path!r} is not auto or one of {', '.join(PATHS)}")
    elif path != "exact" and not isinstance(img, JpegImagePlugin.JpegImageFile):
        raise ValueError(f"the {path} path needs a JPEG, not {img.format}")
    return _DECODERS[path](img, data, spec)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The whole image, decoded, upright and RGB, with the same refusals as :func:`decode_image`.

    For training, whose augmentation crops the full image.
    """
    img = read_header(data, max_pixels)
    with _reasons(img):
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return _to_rgb(img)


def choose_path(img: Image.Image, spec: Preprocessing) -> str:
    """The fastest decode path that keeps the top-1 agreement the module docstring states:
    ``tensor`` for RGB and grayscale JPEGs under a bilinear spec, ``exact`` otherwise. The
    ``draft`` path is never chosen here (see the module docstring)."""
    if (isinstance(img, JpegImagePlugin.JpegImageFile) and spec.crop <= spec.resize
            and img.mode in ("RGB", "L") and spec.interpolation == "bilinear"):
        return "tensor"
    return "exact"


def _draft_request(width: int, height: int, spec: Preprocessing) -> tuple[int, int]:
    """The size asked of JPEG draft mode: DRAFT_MIN_RESIZE times the resize target, so that the
    bilinear resize after the DCT scaling still shrinks by at least that much."""
    target_w, target_h = resized_size(width, height, spec.resize)
    return target_w * DRAFT_MIN_RESIZE, target_h * DRAFT_MIN_RESIZE


def draft_scale(width: int, height: int, spec: Preprocessing) -> int:
    """The DCT scale (1, 2, 4 or 8) that the draft path decodes this image size at: Pillow's
    own rule for :func:`_draft_request`, the largest that keeps both sides at or above it."""
    request_w, request_h = _draft_request(width, height, spec)
    fits = min(width // request_w, height // request_h)
    return next((scale for scale in (8, 4, 2) if fits >= scale), 1)


def normalize(batch: torch.Tensor, spec: Preprocessing,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` (or ``[3, H, W]``) on any device -> ``(x / 255 - mean) / std``.

    The same float32 ops as ``ToTensor`` + ``Normalize``, so the CPU result is bit-identical to
    the reference; the result is then cast to ``dtype``. The memory format is kept.
    """
    mean = torch.as_tensor(spec.mean, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
    std = torch.as_tensor(spec.std, dtype=torch.float32, device=batch.device).view(-1, 1, 1)
    out = batch.to(torch.float32).div(255).sub(mean).div(std)
    return out if dtype == torch.float32 else out.to(dtype)


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(resize)``: the shorter side becomes resize."""
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def read_header(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only; refuse what is not an allowed image or declares too many pixels."""
    if not data:
        raise ImageError("empty image: the object has 0 bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError:
        raise ImageError(_unidentified(data)) from None
    except _DECODE_ERRORS as exc:
        reason = error_reason(exc)
        kind = "truncated" if "truncated" in reason.lower() else "corrupt"
        raise ImageError(f"{kind} {_sniff(data[:16]) or 'image'} header: {reason}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(f"image too large: it declares {width}x{height} = {width * height} "
                         f"pixels, above the limit of {max_pixels}; raise "
                         "RSTREAM_MAX_IMAGE_PIXELS to accept it")
    return img


def _unidentified(data: bytes) -> str:
    name = _sniff(data[:16])
    if name is None:
        return (f"not an image: the data starts with {data[:12]!r}, which matches none of "
                f"the accepted formats ({', '.join(ALLOWED_FORMATS)})")
    if name in ALLOWED_FORMATS:
        return f"corrupt or truncated {name} image: its header cannot be parsed"
    return (f"image format {name} is not allowed: accepted formats are "
            f"{', '.join(ALLOWED_FORMATS)}")


def _sniff(prefix: bytes) -> str | None:
    """The format whose magic bytes ``prefix`` starts with; only prefix checks, no parsing."""
    for magic, name in _MAGIC_OUTSIDE_PIL.items():
        if prefix.startswith(magic):
            return name
    Image.init()
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        if accept is not None and accept(prefix):
            return name
    return None


@contextmanager
def _reasons(img: Image.Image) -> Iterator[None]:
    """Turn a decoder's exception into an ImageError that says truncated or corrupt."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb refused: {exc}") from exc
    except _DECODE_ERRORS as exc:
        reason = error_reason(exc)
        kind = "truncated" if "truncated" in reason.lower() else "corrupt"
        raise ImageError(f"{kind} {img.format} image: {reason}") from exc


def error_reason(exc: BaseException) -> str:
    # torchvision prefixes its messages with "function, /path/file.cpp:LINE, "
    return re.sub(r"^\w+, \S+:\d+, ", "", str(exc).strip()).splitlines()[0] or type(exc).__name__


def _decode_exact(img: Image.Image, data: bytes, spec: Preprocessing) -> torch.Tensor:
    with _reasons(img):
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        img = _to_rgb(img)
    width, height = resized_size(img.width, img.height, spec.resize)
    if img.size != (width, height):
        img = img.resize((width, height), _PIL_FILTERS[spec.interpolation])
    left, top = crop_origin(width, spec.crop), crop_origin(height, spec.crop)
    return _to_chw(img.crop((left, top, left + spec.crop, top + spec.crop)))


def _decode_draft(img: Image.Image, data: bytes, spec: Preprocessing) -> torch.Tensor:
    with _reasons(img):
        stored_w, stored_h = img.size
        swapped = img.getexif().get(ExifTags.Base.Orientation, 1) in _SWAPS_AXES
        drafted = img.draft("RGB", _draft_request(stored_w, stored_h, spec))
        scale = stored_w / drafted[1][2] if drafted else 1.0  # the DCT scale: 1, 2, 4 or 8
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        img = _to_rgb(img)
    full_w, full_h = (stored_h, stored_w) if swapped else (stored_w, stored_h)
    width, height = resized_size(full_w, full_h, spec.resize)
    left, top = crop_origin(width, spec.crop), crop_origin(height, spec.crop)
    # The crop's box in the drafted image: full-size coordinates / target size / DCT scale.
    fx, fy = full_w / width / scale, full_h / height / scale
    box = (left * fx, top * fy, (left + spec.crop) * fx, (top + spec.crop) * fy)
    return _to_chw(img.resize((spec.crop, spec.crop), _PIL_FILTERS[spec.interpolation], box=box))


def _decode_tensor(img: Image.Image, data: bytes, spec: Preprocessing) -> torch.Tensor:
    with _reasons(img):
        # bytearray: decode_jpeg wants a writable buffer (a copy of the compressed bytes only)
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        pixels = decode_jpeg(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    # numpy makes the copy of the crop (a view until then): see "Threads" above
    return torch.from_numpy(np.ascontiguousarray(resize_crop(pixels, spec).numpy()))


def resize_crop(pixels: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """uint8 ``[3, H, W]`` on any device -> a view of its ``[3, crop, crop]`` center after
    torchvision's antialiased resize of the shorter side (the tensor and batched paths)."""
    height, width = pixels.shape[-2:]
    new_w, new_h = resized_size(width, height, spec.resize)
    if (new_w, new_h) != (width, height):  # at its own size the resize returns its input
        pixels = F.resize(pixels, [new_h, new_w], antialias=True)
    left, top = crop_origin(new_w, spec.crop), crop_origin(new_h, spec.crop)
    return pixels[:, top:top + spec.crop, left:left + spec.crop]


_DECODERS: dict[str, Callable[[Image.Image, bytes, Preprocessing], torch.Tensor]] = {
    "exact": _decode_exact, "tensor": _decode_tensor, "draft": _decode_draft}


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT:
        eight_bit = (np.asarray(img).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    return img.convert("RGB")


def crop_origin(size: int, crop: int) -> int:
    """torchvision's CenterCrop offset; negative when it pads with zeros (PIL's crop does)."""
    if size >= crop:
        return round((size - crop) / 2.0)
    return -((crop - size) // 2)


def _to_chw(img: Image.Image) -> torch.Tensor:
    # numpy, not torch, makes the copy: see "Threads" in the module docstring
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1)))
