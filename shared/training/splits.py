"""The split rule of labelled images: which URIs are the gate's validation split, which the
epoch selection's, which train; and what counts as an image file. Torch-free, so the trainer
and the int8 calibration (the default calibration set is a trained model's validation split)
share one rule."""

from __future__ import annotations

import hashlib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")  # preprocess.ALLOWED_FORMATS


def split_of(uri: str, val_percent: int, select_percent: int) -> str:
    """``"val"`` (the gate's), ``"select"`` (the epoch selection's) or ``"train"``, by a hash
    of ``uri``: stable across runs and machines, and the gate's split does not move when
    ``select_percent`` changes."""
    digest = hashlib.sha1(uri.encode(), usedforsecurity=False).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    if bucket < val_percent:
        return "val"
    return "select" if bucket < val_percent + select_percent else "train"


def is_validation(uri: str, val_percent: int) -> bool:
    """Whether ``uri`` belongs to the gate's validation split."""
    return split_of(uri, val_percent, 0) == "val"
