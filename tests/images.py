"""Sample images for tests, made from photos that ship with scikit-image and scikit-learn.

Nothing is downloaded. PIL and numpy only, so tests of the producer side can use it too.

- ``photo(name, size)``: a real RGB photo, cropped to the size's aspect ratio and resized.
- ``jpeg_bytes`` / ``png_bytes`` / ``encode``: one image, encoded.
- ``oriented_bytes``: pixels stored rotated/flipped plus the EXIF tag that undoes it.
- ``animated_bytes``: an animated GIF or WebP.
- ``eps_bytes`` / ``pdf_bytes`` / ``tiff_bytes`` / ``bomb_png``: inputs that must be refused.
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import skimage
import sklearn
from PIL import ExifTags, Image, ImageOps

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
SKLEARN_IMAGES = Path(sklearn.__file__).parent / "datasets" / "images"

#: colour photos (name -> file); grayscale ones: "camera", "moon", "coins"
PHOTOS = {
    "astronaut": SKIMAGE_DATA / "astronaut.png",
    "coffee": SKIMAGE_DATA / "coffee.png",
    "chelsea": SKIMAGE_DATA / "chelsea.png",
    "rocket": SKIMAGE_DATA / "rocket.jpg",
    "motorcycle": SKIMAGE_DATA / "motorcycle_left.png",
    "hubble": SKIMAGE_DATA / "hubble_deep_field.jpg",
    "china": SKLEARN_IMAGES / "china.jpg",
    "flower": SKLEARN_IMAGES / "flower.jpg",
    "camera": SKIMAGE_DATA / "camera.png",
    "moon": SKIMAGE_DATA / "moon.png",
    "coins": SKIMAGE_DATA / "coins.png",
}

# The transpose that EXIF orientation N asks a viewer to apply (Pillow's exif_transpose table),
# and its inverse, which stores the pixels so that the viewer's transpose restores them.
_VIEWER = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}
_INVERSE = {**_VIEWER, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@cache
def _original(name: str) -> Image.Image:
    with Image.open(PHOTOS[name]) as img:
        img.load()
        return img


def photo(name: str, size: tuple[int, int] | None = None) -> Image.Image:
    """The photo ``name`` (a key of PHOTOS) in its own mode; center-cropped to ``size``'s
    aspect ratio and resized with Lanczos when ``size`` is given. A fresh copy each call."""
    img = _original(name)
    if size is None:
        return img.copy()
    return ImageOps.fit(img, size, Image.Resampling.LANCZOS)


def encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
    """``img`` saved as ``fmt`` (a PIL format name) with PIL's save ``options``."""
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 90, **options: Any) -> bytes:
    """``img`` as a JPEG (RGB, L and CMYK stay as they are; other modes become RGB)."""
    if img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    return encode(img, "JPEG", quality=quality, **options)


def png_bytes(img: Image.Image, **options: Any) -> bytes:
    """``img`` as a PNG, in its own mode."""
    return encode(img, "PNG", **options)


def oriented_bytes(upright: Image.Image, orientation: int, fmt: str = "PNG",
                   **options: Any) -> bytes:
    """An image whose stored pixels are ``upright`` rotated/flipped so that applying the EXIF
    ``orientation`` tag (1-8) it carries shows ``upright`` again."""
    method = _INVERSE.get(orientation)
    stored = upright.transpose(method) if method is not None else upright.copy()
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return encode(stored, fmt, exif=exif.tobytes(), **options)


def animated_bytes(frames: list[Image.Image], fmt: str = "GIF") -> bytes:
    """An animated ``fmt`` (GIF or WEBP) of ``frames``, 100 ms each, looping."""
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                  **({"lossless": True} if fmt == "WEBP" else {}))


def eps_bytes() -> bytes:
    """A small Encapsulated PostScript file (written by PIL, no Ghostscript needed)."""
    return encode(photo("chelsea", (32, 24)), "EPS")


def pdf_bytes() -> bytes:
    """A one-page PDF holding a small photo."""
    return encode(photo("chelsea", (32, 24)), "PDF")


def tiff_bytes() -> bytes:
    """A small TIFF photo."""
    return encode(photo("chelsea", (32, 24)), "TIFF")


def bomb_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` RGB pixels.

    The pixel data is one compressed row, so decoding it would fail: a refusal that names the
    size proves the size was checked before decoding."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    row = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 64))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row)
            + chunk(b"IEND", b""))
