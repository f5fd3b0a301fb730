"""Sample images for demos, benchmarks and tests, made from data that ships in packages.

scikit-image ships a few photos in its data folder and scikit-learn two in
``datasets/images``; both come with the ``dev`` extra. Nothing is downloaded. The photos are
varied by random crops, flips and resizes so that no two samples are the same image.
Labelled images: scikit-learn's 1,797 handwritten digits (8x8 pixels, 16 levels) as 32x32
PNG files in class folders, for training and for scoring with known answers.
"""

from __future__ import annotations

import importlib.util
import io
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from rstream.shared.errors import ConfigError
from rstream.shared.storage import Storage, join

PHOTOS = (
    ("skimage", "data/astronaut.png"), ("skimage", "data/coffee.png"),
    ("skimage", "data/chelsea.png"), ("skimage", "data/rocket.jpg"),
    ("skimage", "data/motorcycle_left.png"), ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/retina.jpg"), ("skimage", "data/ihc.png"),
    ("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
)


def photo_paths() -> list[Path]:
    """The shipped photos found on this machine (found without importing the packages)."""
    found = []
    for package, relative in PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec and spec.origin:
            path = Path(spec.origin).parent / relative
            if path.is_file():
                found.append(path)
    if not found:
        raise ConfigError("no sample photos found: install scikit-image or scikit-learn "
                          "(pip install -e '.[dev]')")
    return found


def photos() -> list[Image.Image]:
    """The shipped photos as RGB images."""
    return [Image.open(path).convert("RGB") for path in photo_paths()]


def variants(count: int, size: tuple[int, int] | None = None, seed: int = 0,
             fmt: str = "JPEG") -> Iterator[tuple[str, bytes]]:
    """``count`` (file name, bytes) samples: random crops and flips of the photos.

    With ``size`` every sample is exactly that (width, height); without it the longer side is
    random between 48 and 400 pixels and every fourth sample is a PNG.
    """
    rng = random.Random(seed)
    sources = photos()
    for i in range(count):
        photo = sources[i % len(sources)]
        w, h = photo.size
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = photo.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if size:
            image = image.resize(size, Image.Resampling.BILINEAR)
            kind = fmt
        else:
            scale = rng.randint(48, 400) / max(cw, ch)
            image = image.resize((max(8, int(cw * scale)), max(8, int(ch * scale))))
            kind = "PNG" if i % 4 == 0 else fmt
        buf = io.BytesIO()
        image.save(buf, kind, **({"quality": 90} if kind == "JPEG" else {}))
        suffix = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(kind, kind.lower())
        yield f"sample-{i:06d}.{suffix}", buf.getvalue()


def write_samples(storage: Storage, prefix: str, count: int,
                  size: tuple[int, int] | None = None, seed: int = 0) -> list[str]:
    """Write ``count`` samples under ``prefix``; returns their URIs."""
    uris = []
    for name, blob in variants(count, size, seed):
        uri = join(prefix, name)
        storage.write(uri, blob)
        uris.append(uri)
    return uris


DIGITS = 1797  # images in scikit-learn's load_digits


def digit_pngs(count: int = DIGITS, start: int = 0) -> Iterator[tuple[str, bytes]]:
    """Digits ``start`` to ``start + count - 1`` as 32x32 grayscale PNG files, upscaled
    bilinearly from 8x8: (``{digit}/{index:04d}.png``, bytes)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("the digits need scikit-learn: pip install -e '.[dev]'") from None
    digits = load_digits()
    for i in range(start, min(start + count, len(digits.images))):
        pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
        image = Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        yield f"{digits.target[i]}/{i:04d}.png", buffer.getvalue()


def write_digits(storage: Storage, prefix: str, heldout: int) -> tuple[int, int]:
    """Every digit under ``prefix``: the last ``heldout`` in
    ``{prefix}/heldout/{digit}/``, the others in ``{prefix}/train/{digit}/``; the two counts."""
    if not 0 <= heldout < DIGITS:
        raise ConfigError(f"--heldout {heldout} is invalid: use 0 to {DIGITS - 1}")
    first_heldout = DIGITS - heldout
    for i, (name, blob) in enumerate(digit_pngs()):
        storage.write(join(prefix, "heldout" if i >= first_heldout else "train", name), blob)
    return first_heldout, heldout
