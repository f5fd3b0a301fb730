"""scikit-learn's digits as labelled PNG files in the ``{class}/`` layout, for training tests.

Nothing is downloaded: ``load_digits`` ships with scikit-learn. The images are
:func:`rstream.worker.samples.digit_pngs`, the same the demo trains on.
"""

from __future__ import annotations

from pathlib import Path

from rstream.worker.samples import digit_pngs

__all__ = ["digit_pngs", "render_digits"]


def render_digits(root: Path, count: int, start: int = 0, folder: str = "train") -> None:
    """Digits ``start`` to ``start + count - 1`` as PNG files in ``root/{folder}/{digit}/``."""
    for name, data in digit_pngs(count, start):
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
