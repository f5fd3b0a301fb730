"""Labelled training images: listing, the validation split, the data fingerprint, datasets.

Labelled data is either a prefix laid out as ``{prefix}/{class}/...`` (any depth below the
class folder) or a JSONL labels manifest, one ``{"uri": ..., "label": ...}`` per line.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from shared.errors import ConfigError, PermanentError
from shared.storage import Storage, join
from worker.preprocess import Preprocessing, decode_image, open_image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")  # preprocess.ALLOWED_FORMATS

Sample = tuple[torch.Tensor, int] | None  # None: the image could not be decoded


@dataclass(frozen=True)
class LabelledImage:
    """One training image: where it is, its class, and its ETag or size (for the fingerprint)."""

    uri: str
    label: str
    tag: str


def list_labelled(storage: Storage, source: str) -> list[LabelledImage]:
    """Every labelled image of ``source`` (a ``{class}/`` prefix or a .jsonl manifest), sorted."""
    if source.endswith(".jsonl"):
        items = _from_manifest(storage, source)
    else:
        items = _from_prefix(storage, source)
    if not items:
        raise ConfigError(
            f"no labelled images in {source}: put images in {join(source, '{class}')}/ or point "
            "RSTREAM_TRAIN_DATA at a JSONL manifest of {\"uri\", \"label\"} lines")
    return sorted(items, key=lambda item: item.uri)


def _from_prefix(storage: Storage, source: str) -> list[LabelledImage]:
    base = source.rstrip("/") + "/"
    items = []
    for info in storage.list_info(base):
        label, _, rest = info.key[len(base):].partition("/")
        filename = rest.rsplit("/", 1)[-1]
        if not rest or filename.startswith(".") or not filename.lower().endswith(IMAGE_EXTENSIONS):
            continue  # a file beside the class folders, a hidden file, or not an image
        items.append(LabelledImage(info.key, label, info.etag or str(info.size)))
    return items


def _from_manifest(storage: Storage, source: str) -> list[LabelledImage]:
    items = []
    for number, raw in enumerate(storage.read(source).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            uri, label = str(line["uri"]), str(line["label"])
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{source} line {number}: not a JSON object with \"uri\" and "
                              "\"label\": fix that line") from None
        info = storage.stat(uri)
        items.append(LabelledImage(uri, label, info.etag or str(info.size)))
    return items


def classes_of(items: Sequence[LabelledImage]) -> list[str]:
    """The sorted class names; at least two, or training has nothing to tell apart."""
    classes = sorted({item.label for item in items})
    if len(classes) < 2:
        raise ConfigError(f"the training data has {len(classes)} class(es) ({', '.join(classes)}): "
                          "a classifier needs images of at least two classes")
    return classes


def is_validation(uri: str, val_percent: int) -> bool:
    """Whether ``uri`` belongs to the validation split: stable across runs and machines."""
    digest = hashlib.sha1(uri.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") % 100 < val_percent


def split(items: Sequence[LabelledImage], val_percent: int
          ) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(train, validation), by a hash of each URI; both must be non-empty."""
    train = [item for item in items if not is_validation(item.uri, val_percent)]
    val = [item for item in items if is_validation(item.uri, val_percent)]
    if not train or not val:
        raise ConfigError(
            f"a validation split of {val_percent}% of {len(items)} images leaves "
            f"{len(train)} to train and {len(val)} to validate: add images or change val_percent")
    return train, val


def fingerprint(items: Sequence[LabelledImage]) -> str:
    """sha256 of the sorted (uri, label, etag-or-size) list: changes when any image does."""
    rows = sorted((item.uri, item.label, item.tag) for item in items)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


class _LabelledDataset(Dataset[Sample]):
    """Fetches an image, turns it into a uint8 [3, crop, crop] tensor; None when it fails."""

    def __init__(self, storage: Storage, items: Sequence[LabelledImage], classes: list[str],
                 to_tensor: Callable[[bytes], torch.Tensor], max_bytes: int | None) -> None:
        self.storage = storage
        self.max_bytes = max_bytes
        self.items = list(items)
        self.index = {name: i for i, name in enumerate(classes)}
        self.to_tensor = to_tensor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        item = self.items[i]
        try:
            image = self.to_tensor(self.storage.read(item.uri, self.max_bytes))
        except PermanentError as exc:
            # One bad image should not end a training run; it is left out and logged.
            logger.warning("skipping %s: %s", item.uri, exc)
            return None
        return image, self.index.get(item.label, -1)


def training_dataset(storage: Storage, items: Sequence[LabelledImage], classes: list[str],
                     spec: Preprocessing, max_pixels: int, *,
                     max_bytes: int | None = None) -> Dataset[Sample]:
    """Training samples: RandomResizedCrop(crop) and a horizontal flip, nothing else."""
    augment = v2.Compose([v2.RandomResizedCrop(spec.crop, antialias=True),
                          v2.RandomHorizontalFlip()])
    return _LabelledDataset(storage, items, classes,
                            functools.partial(_augmented, augment=augment, max_pixels=max_pixels),
                            max_bytes)


def _augmented(data: bytes, *, augment: v2.Compose, max_pixels: int) -> torch.Tensor:
    return augment(v2.functional.pil_to_tensor(open_image(data, max_pixels)))


def eval_dataset(storage: Storage, items: Sequence[LabelledImage], classes: list[str],
                 spec: Preprocessing, max_pixels: int, *,
                 max_bytes: int | None = None) -> Dataset[Sample]:
    """Validation samples with the serving preprocessing; labels unknown to ``classes`` are -1."""
    return _LabelledDataset(storage, items, classes,
                            functools.partial(decode_image, spec=spec, max_pixels=max_pixels),
                            max_bytes)


def collate(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the samples that decoded; an all-bad batch is empty."""
    good = [s for s in samples if s is not None]
    if not good:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return (torch.stack([image for image, _ in good]),
            torch.tensor([label for _, label in good], dtype=torch.long))


def loader(dataset: Dataset[Sample], *, batch_size: int, workers: int, seed: int,
           device: torch.device, shuffle: bool) -> DataLoader[Any]:
    """Batches of (uint8 images, labels); a seeded shuffle; pinned memory for CUDA."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      collate_fn=collate, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(seed),
                      persistent_workers=workers > 0)
