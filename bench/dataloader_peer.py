"""The peer to beat: a plain PyTorch ``DataLoader`` loop, as a user would write it.

A ``Dataset`` that fetches each image with the same storage client rstream uses, decodes it
with PIL and torchvision's reference eval transform (Resize, CenterCrop, ToTensor,
Normalize, with the model's own sizes), ``DataLoader(num_workers=...)``, the same model in
eager PyTorch (channels_last, fp32 on the CPU, fp16 autocast on CUDA), top-k, and one JSONL
write of every line at the end. Used by bench/e2e.py as ``rstream/dataloader``.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.worker.model.device import resolve_device
from rstream.worker.model.loader import load_model
from rstream.worker.model.predict import autocast_dtype


class _Images(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, settings: Settings, uris: list[str], transform: Any) -> None:
        self.settings, self.uris, self.transform = settings, uris, transform
        self._storage: Storage | None = None  # one per worker process, made there

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._storage is None:
            self._storage = Storage(self.settings)
        image = Image.open(io.BytesIO(self._storage.read(self.uris[i]))).convert("RGB")
        return self.transform(image), i


class DataLoaderPeer:
    """The model loaded once (as in a long-lived script); :meth:`run` scores a list of URIs."""

    def __init__(self, settings: Settings, model_ref: str, *, workers: int = 2,
                 batch_size: int = 64) -> None:
        self.settings, self.workers, self.batch_size = settings, workers, batch_size
        self.loaded = load_model(model_ref)
        spec = self.loaded.preprocessing
        self.transform = v2.Compose([
            v2.Resize(spec.resize, antialias=True), v2.CenterCrop(spec.crop), v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])
        self.device = resolve_device(settings.device)
        self.dtype = autocast_dtype(settings.precision, self.device)
        self.module = self.loaded.module.to(self.device).to(
            memory_format=torch.channels_last).eval()

    def run(self, uris: list[str], out_uri: str) -> float:
        """Seconds from the first fetch to the JSONL of every line written."""
        start = time.perf_counter()
        loader = DataLoader(_Images(self.settings, uris, self.transform),
                            batch_size=self.batch_size, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda")
        classes, lines = self.loaded.classes, []
        with torch.inference_mode():
            for images, index in loader:
                x = images.to(self.device, non_blocking=True).contiguous(
                    memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=self.dtype,
                                    enabled=self.dtype is not None):
                    logits = self.module(x)
                probs, top = torch.softmax(logits.float(), 1).topk(min(5, len(classes)))
                for i, p, t in zip(index.tolist(), probs.tolist(), top.tolist(), strict=True):
                    lines.append({"uri": uris[i], "ok": True, "model": self.loaded.model_id,
                                  "top": [{"index": c, "label": classes[c], "prob": q}
                                          for c, q in zip(t, p, strict=True)]})
        Storage(self.settings).write(
            out_uri, "".join(json.dumps(line) + "\n" for line in lines).encode())
        return time.perf_counter() - start
