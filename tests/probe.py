"""A probe for decode fidelity: JPEG photos of a given size, and a classifier that can tell.

A random-init resnet18 sends almost every image to the same one or two classes, so top-1
agreement with it says nothing about whether two decodes of an image differ. The probe is a
seeded random resnet18 whose ``fc`` is re-made on the pooled features of the very images it
judges: centred on their mean, scaled by their spread, with seeded random class directions.
Its top-1 classes then spread over many classes, and a change in the input that moves the
features by a fraction of their spread between images can change the top-1 class.

Photos: the colour and grayscale photos of :mod:`tests.images` (scikit-image, scikit-learn),
cropped and flipped at random. Half the images are a crop resized to the size (for sizes
above the photos' own, an upscale: smooth), half are a crop at its own resolution, or at most
2x, mirror-tiled to the size, so large sizes also hold the photos' real fine detail.
PIL, numpy and torch only; nothing is downloaded.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from torchvision import transforms as T
from torchvision.models import resnet18

from rstream.worker.model.preprocess import Preprocessing
from tests.images import PHOTOS, jpeg_bytes, photo

SOURCES = tuple(PHOTOS)


def probe_jpegs(count: int, size: tuple[int, int], seed: int = 0,
                quality: int = 90) -> list[bytes]:
    """``count`` RGB JPEGs of exactly ``size`` (width, height); see the module docstring."""
    rng = random.Random(f"{seed}-{size}")
    images = []
    for i in range(count):
        source = photo(SOURCES[i % len(SOURCES)]).convert("RGB")
        w, h = source.size
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = source.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        if i % 2 == 0:
            image = image.resize(size, Image.Resampling.BILINEAR)
        else:
            image = _tiled(image, size, rng.uniform(1.0, 2.0))
        images.append(jpeg_bytes(image, quality=quality))
    return images


def _tiled(image: Image.Image, size: tuple[int, int], scale: float) -> Image.Image:
    """``image`` scaled by ``scale`` then mirror-tiled (or cropped) to ``size``."""
    scaled = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                          Image.Resampling.BILINEAR)
    pixels = np.asarray(scaled)
    reps_y, reps_x = math.ceil(size[1] / pixels.shape[0]), math.ceil(size[0] / pixels.shape[1])
    row = np.concatenate([pixels if k % 2 == 0 else pixels[:, ::-1] for k in range(reps_x)], 1)
    tiled = np.concatenate([row if k % 2 == 0 else row[::-1] for k in range(reps_y)], 0)
    return Image.fromarray(np.ascontiguousarray(tiled[:size[1], :size[0]]))


def reference(data: bytes, spec: Preprocessing | None = None) -> torch.Tensor:
    """torchvision's eval transform on the full PIL decode: Resize (antialiased), CenterCrop,
    ToTensor, Normalize; the float tensor the model sees."""
    spec = spec or Preprocessing()
    transform = T.Compose([T.Resize(spec.resize, T.InterpolationMode(spec.interpolation),
                                    antialias=True),
                           T.CenterCrop(spec.crop), T.ToTensor(),
                           T.Normalize(spec.mean, spec.std)])
    return transform(Image.open(io.BytesIO(data)).convert("RGB"))


class Probe(nn.Module):
    """A seeded resnet18 trunk and an ``fc`` fitted to spread the given images' features."""

    def __init__(self, images: torch.Tensor, seed: int = 0, classes: int = 1000) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.trunk = resnet18(weights=None)
            directions = torch.randn(classes, 512) / math.sqrt(512)
        self.trunk.fc = nn.Identity()
        self.trunk.eval()
        features = self.features(images)
        mean, spread = features.mean(0), features.std(0).mean()
        self.fc = nn.Linear(512, classes)
        with torch.no_grad():
            self.fc.weight.copy_(directions / spread)
            self.fc.bias.copy_(-(directions / spread) @ mean)

    def features(self, images: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([self.trunk(images[i:i + chunk])
                              for i in range(0, len(images), chunk)]).clone()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))

    def top1(self, images: torch.Tensor) -> torch.Tensor:
        """The top-1 class of each image."""
        with torch.inference_mode():
            return self(images).argmax(1)


def lower_bound(agree: int, total: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound of a rate seen as ``agree`` of ``total``."""
    if agree == 0:
        return 0.0

    def tail(p: float) -> float:  # P(X >= agree) for X ~ Binomial(total, p)
        return sum(math.comb(total, k) * p**k * (1 - p)**(total - k)
                   for k in range(agree, total + 1))

    low, high = 0.0, agree / total
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if tail(middle) < 1 - confidence else (low, middle)
    return low
