"""Small re-encoded JPEGs of a job's images, with the worker's own limits.

Pillow (the ``api`` extra) is imported on the first thumbnail, so the rest of the submission
side needs no imaging library. The object is read with ``RSTREAM_MAX_OBJECT_BYTES``, Pillow is
offered only the worker's formats, and the pixel count the header declares is checked against
``RSTREAM_MAX_IMAGE_PIXELS`` before anything is decoded. What cannot be shown becomes a
placeholder, with the reason, never an error page.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

from rstream.shared.constants import IMAGE_FORMATS
from rstream.shared.errors import PermanentError, TransientError
from rstream.shared.storage import Storage

SIZES = (160, 480)  # the gallery's tiles and the larger view
QUALITY = 80


@dataclass(frozen=True)
class Thumbnail:
    """A JPEG, and why it is a placeholder (None: it is the image)."""

    jpeg: bytes
    placeholder: str | None = None


def thumbnail(storage: Storage, uri: str, size: int, *, max_bytes: int,
              max_pixels: int) -> Thumbnail:
    """``uri`` at most ``size`` pixels on its longer side, as a JPEG; a placeholder when it
    cannot be read or decoded within the limits."""
    try:
        data = storage.read(uri, max_bytes=max_bytes)
    except TransientError:
        raise  # a storage hiccup: the caller answers 503, the browser tries again
    except PermanentError as exc:
        return Thumbnail(placeholder_jpeg(size), f"{type(exc).__name__}: {exc}")
    try:
        return Thumbnail(_shrink(data, size, max_pixels))
    except _Refused as exc:
        return Thumbnail(placeholder_jpeg(size), str(exc))
    except Exception as exc:  # Pillow raises many kinds for a broken file
        return Thumbnail(placeholder_jpeg(size), f"undecodable image: {type(exc).__name__}")


class _Refused(Exception):
    """An image outside the worker's limits."""


def _shrink(data: bytes, size: int, max_pixels: int) -> bytes:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # our own limit, checked below, is the one that applies
    if not data:
        raise _Refused("empty image: the object has 0 bytes")
    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
        width, height = img.size
        if width * height > max_pixels:
            raise _Refused(f"image declares {width}x{height} pixels, above "
                           f"RSTREAM_MAX_IMAGE_PIXELS={max_pixels}")
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced DCT scale
        small = img.convert("RGB")
        small.thumbnail((size, size))
        out = io.BytesIO()
        small.save(out, "JPEG", quality=QUALITY)
        return out.getvalue()


@functools.cache
def placeholder_jpeg(size: int) -> bytes:
    """A plain grey square with a darker cross: "no image here"."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (224, 224, 224))
    draw = ImageDraw.Draw(img)
    draw.line((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(150, 150, 150), width=4)
    draw.line((size // 4, 3 * size // 4, 3 * size // 4, size // 4), fill=(150, 150, 150), width=4)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=QUALITY)
    return out.getvalue()
