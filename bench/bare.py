"""The torch side of bench/e2e.py: the bare forward pass (the ceiling) and a CPU profile of the
stages that come before it (fetch, decode), measured in the benchmark's own process."""

from __future__ import annotations

import io
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from PIL import Image

from bench.services import cpu_seconds
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.worker.model.device import resolve_device
from rstream.worker.model.loader import load_model
from rstream.worker.model.onnx import make_predictor
from rstream.worker.model.predict import Predictor
from rstream.worker.model.preprocess import choose_path, decode_image


class Bare:
    """``Predictor.predict`` on ready uint8 batches of ``settings.max_batch`` images, with the
    backend of ``settings.backend``.

    Passes run on one long-lived thread of their own, as the batcher's forward does: on a CPU,
    torch's intra-op threads behave differently for the main thread (bench/score_vs_bare.py
    measured it 20% slower on this busy 2-core machine), which would skew the ratio.
    """

    def __init__(self, model: str, settings: Settings, blobs: list[bytes]) -> None:
        device = resolve_device(settings.device)
        # rstream's own backend (auto: ONNX Runtime on the CPU), as its workers serve it
        self.predictor = make_predictor(settings.backend, load_model(model), device,
                                        settings.precision, settings.topk)
        spec = self.predictor.preprocessing
        tensors = [decode_image(b, spec, settings.max_image_pixels) for b in blobs]
        step = settings.max_batch
        self.batches = [self.predictor.collate(tensors[i:i + step])
                        for i in range(0, len(tensors), step)]
        self.images = len(tensors)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="bench-bare")

    def run(self) -> dict[str, float]:
        """One pass over every batch: images/s and CPU seconds per image (this process)."""
        return self._thread.submit(self._one_pass).result()

    def _one_pass(self) -> dict[str, float]:
        cpu, start = cpu_seconds(), time.perf_counter()
        for batch in self.batches:
            self.predictor.predict(batch)
        if self.predictor.device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        return {"images_per_s": self.images / wall, "cpu_ms_per_image": 1000 * cpu / self.images,
                "cores_used": cpu / wall}

    def close(self) -> None:
        self._thread.shutdown()


def profile_inputs(storage: Storage, uris: list[str], settings: Settings,
                   predictor: Predictor) -> dict[str, Any]:
    """CPU milliseconds per image of fetch (client and, for moto, the server: both run in this
    process) and of decode, one thread each, so that nothing else runs; the decode paths."""
    spec = predictor.preprocessing
    cpu, start = cpu_seconds(), time.perf_counter()
    blobs = [storage.read(uri) for uri in uris]
    fetch = (cpu_seconds() - cpu, time.perf_counter() - start)
    cpu, start = cpu_seconds(), time.perf_counter()
    for blob in blobs:
        decode_image(blob, spec, settings.max_image_pixels)
    decode = (cpu_seconds() - cpu, time.perf_counter() - start)
    paths = Counter(choose_path(Image.open(io.BytesIO(b)), spec) for b in blobs)
    n = len(uris)
    return {"images": n,
            "fetch_cpu_ms_per_image": round(1000 * fetch[0] / n, 2),
            "fetch_wall_ms_per_image": round(1000 * fetch[1] / n, 2),
            "decode_cpu_ms_per_image": round(1000 * decode[0] / n, 2),
            "decode_wall_ms_per_image": round(1000 * decode[1] / n, 2),
            "decode_paths": dict(paths)}


def torch_info(settings: Settings) -> dict[str, Any]:
    device = resolve_device(settings.device)
    return {"torch": torch.__version__, "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else "cpu"),
            "torch_threads": torch.get_num_threads(),
            "parallel_backend": "OpenMP" if torch.backends.openmp.is_available() else "native"}
