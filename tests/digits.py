"""scikit-learn's digits as labelled PNG files in the ``{class}/`` layout, for training tests.

Nothing is downloaded: ``load_digits`` ships with scikit-learn. PIL and numpy only.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def digit_pngs(count: int, start: int = 0) -> Iterator[tuple[str, bytes]]:
    """Digits ``start`` to ``start + count - 1`` (of 1797) as 32x32 PNG files.

    Yields (``{digit}/{index}.png``, bytes).
    """
    digits = load_digits()
    for i in range(start, start + count):
        pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
        image = Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        yield f"{digits.target[i]}/{i:04d}.png", buffer.getvalue()


def render_digits(root: Path, count: int, start: int = 0, folder: str = "train") -> None:
    """Digits ``start`` to ``start + count - 1`` as PNG files in ``root/{folder}/{digit}/``."""
    for name, data in digit_pngs(count, start):
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
