"""Labelled training images: listing, the three splits, the run fingerprint, augmentation,
datasets.

Labelled data is either a prefix laid out as ``{prefix}/{class}/...`` (any depth below the
class folder) or a labels table (CSV, JSON lines or Parquet, read by ``shared/tables/``), a
row per image with its URI and its label in two named columns (``uri`` and ``label`` by
default).
Training samples are the whole image decoded and augmented (:class:`Augmentation`);
evaluation samples are decoded like serving decodes them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.transforms import v2

from rstream.shared.errors import ConfigError, PermanentError
from rstream.shared.storage import Storage, join
from rstream.shared.tables.reader import Table, format_of, numbered_rows
from rstream.shared.training.splits import IMAGE_EXTENSIONS, split_of
from rstream.worker.model.preprocess import Preprocessing, decode_image, open_image

logger = logging.getLogger(__name__)

Sample = tuple[torch.Tensor, int] | None  # None: the image could not be decoded


@dataclass(frozen=True)
class LabelledImage:
    """One training image: where it is, its class, and its ETag or size (for the fingerprint)."""

    uri: str
    label: str
    tag: str


def list_labelled(storage: Storage, source: str, *, uri_column: str = "uri",
                  label_column: str = "label") -> list[LabelledImage]:
    """Every labelled image of ``source`` (a ``{class}/`` prefix, or a labels table whose
    columns ``uri_column`` and ``label_column`` name each image and its class), sorted."""
    if format_of(source):
        items = _from_table(storage, source, Table(uri_column=uri_column,
                                                   keep=(label_column,)).for_location(source))
    else:
        items = _from_prefix(storage, source)
    if not items:
        raise ConfigError(
            f"no labelled images in {source}: put images in {join(source, '{class}')}/ or point "
            "RSTREAM_TRAIN_DATA at a labels table (.csv, .jsonl, .ndjson, .parquet)")
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


def _from_table(storage: Storage, source: str, table: Table) -> list[LabelledImage]:
    label_column = table.keep[0]
    items = []
    rows = numbered_rows(lambda: storage.open_binary(source), source, table)
    for number, uri, kept in rows:
        label = kept[label_column]
        if label is None or isinstance(label, bool) or not str(label).strip():
            raise ConfigError(f"{source}: row {number}, column {label_column!r}: no label "
                              "(text or an integer class): fix that row or leave it out")
        info = storage.stat(uri)
        items.append(LabelledImage(uri, str(label).strip(), info.etag or str(info.size)))
    return items


def classes_of(items: Sequence[LabelledImage]) -> list[str]:
    """The sorted class names; at least two, or training has nothing to tell apart."""
    classes = sorted({item.label for item in items})
    if len(classes) < 2:
        raise ConfigError(f"the training data has {len(classes)} class(es) ({', '.join(classes)}): "
                          "a classifier needs images of at least two classes")
    return classes


@dataclass(frozen=True)
class Splits:
    """Training images, the selection split (best epoch, early stop), the gate's split."""

    train: list[LabelledImage]
    select: list[LabelledImage]
    val: list[LabelledImage]


def split(items: Sequence[LabelledImage], val_percent: int, select_percent: int) -> Splits:
    """The three splits, by a hash of each URI; none may be empty."""
    parts: dict[str, list[LabelledImage]] = {"train": [], "select": [], "val": []}
    for item in items:
        parts[split_of(item.uri, val_percent, select_percent)].append(item)
    if not all(parts.values()):
        raise ConfigError(
            f"splits of {val_percent}% (the gate's) and {select_percent}% (epoch selection) of "
            f"{len(items)} images leave {len(parts['train'])} to train, "
            f"{len(parts['select'])} to select epochs and {len(parts['val'])} for the gate: "
            "add images or change val_percent / select_percent")
    return Splits(**parts)


def fingerprint(items: Sequence[LabelledImage], config: Mapping[str, Any] | None = None) -> str:
    """sha256 of the sorted (uri, label, etag-or-size) list and of the training options
    (``config``): changes when any image, label or option does."""
    rows = sorted((item.uri, item.label, item.tag) for item in items)
    payload = {"data": rows, "config": dict(config or {})}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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


@dataclass(frozen=True)
class Augmentation:
    """RandomResizedCrop to ``crop`` (area ``scale``, aspect ``ratio``) and horizontal flips."""

    crop: int
    scale: tuple[float, ...] | None = None  # None: (scale_floor(...), 1) per image
    ratio: tuple[float, ...] = (3 / 4, 4 / 3)
    flip: float = 0.5

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``[3, H, W]`` -> uint8 ``[3, crop, crop]``, drawn from torch's generator."""
        height, width = image.shape[-2:]
        scale = self.scale or (scale_floor(width, height), 1.0)
        top, left, h, w = transforms.RandomResizedCrop.get_params(image, list(scale),
                                                                  list(self.ratio))
        out = v2.functional.resized_crop(image, top, left, h, w, [self.crop, self.crop],
                                         antialias=True)
        if self.flip and float(torch.rand(())) < self.flip:
            out = v2.functional.horizontal_flip(out)
        return out


MIN_CROP_SIDE = 112  # pixels: torchvision's smallest crop (0.08 of the area) of a 400x400 photo


def scale_floor(width: int, height: int) -> float:
    """The smallest crop area, as a fraction of the image: torchvision's 0.08, raised so that a
    crop keeps at least ``MIN_CROP_SIDE`` squared pixels of the image. Photos of 500x375 and
    up get 0.08; a 200x200 image 0.31; images of 112x112 and less are never cut (1.0)."""
    return min(1.0, max(0.08, MIN_CROP_SIDE ** 2 / (width * height)))


def training_dataset(storage: Storage, items: Sequence[LabelledImage], classes: list[str],
                     augment: Augmentation, max_pixels: int, *,
                     max_bytes: int | None = None) -> Dataset[Sample]:
    """Training samples: the whole image decoded (see :func:`open_image`), then ``augment``."""
    return _LabelledDataset(storage, items, classes,
                            functools.partial(_augmented, augment=augment, max_pixels=max_pixels),
                            max_bytes)


def _augmented(data: bytes, *, augment: Augmentation, max_pixels: int) -> torch.Tensor:
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
