"""Decode throughput and parity of each preprocessing path, per JPEG size; prints JSON.

    .venv/bin/python -m bench.decode [--seconds 1.0] [--threads 1] [--repeats 3]

``reference`` is torchvision's eval transform on a full PIL decode (``Resize``, ``CenterCrop``,
``ToTensor``, ``Normalize``); ``exact`` / ``tensor`` / ``draft`` / ``auto`` are
``rstream.worker.model.preprocess.decode_image(path=...)``, which stops at uint8 (normalization runs
later, on the device). Differences are in uint8 levels against the reference's uint8 output. The
photo is scikit-learn's china.jpg (640x427), cropped to each aspect ratio and resized. Each rate is
the best of ``--repeats`` rounds taken in turn, to damp noise from other load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from PIL import Image
from torchvision import transforms as T

from rstream.worker.model.preprocess import Preprocessing, choose_path, decode_image
from tests.images import jpeg_bytes, photo

SIZES = ((500, 375), (1920, 1080), (4000, 3000))
PATHS = ("exact", "tensor", "draft", "auto")
LIMIT = 64_000_000


def throughput(fn: Callable[[], object], seconds: float, threads: int) -> float:
    """Images per second of ``fn`` run back to back in ``threads`` threads for ``seconds``."""
    fn()
    deadline = time.perf_counter() + seconds

    def loop() -> int:
        count = 0
        while time.perf_counter() < deadline:
            fn()
            count += 1
        return count

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(lambda _: loop(), range(threads)))
    return round(done / (time.perf_counter() - start), 1)


def _reference(transform: Callable[[Image.Image], object], data: bytes) -> object:
    return transform(Image.open(io.BytesIO(data)).convert("RGB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=1, help="decode threads")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best one counts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = Preprocessing()
    reference = T.Compose([T.Resize(spec.resize), T.CenterCrop(spec.crop), T.ToTensor(),
                           T.Normalize(spec.mean, spec.std)])
    reference_u8 = T.Compose([T.Resize(spec.resize), T.CenterCrop(spec.crop), T.PILToTensor()])
    results: dict[str, dict[str, object]] = {}
    for width, height in SIZES:
        data = jpeg_bytes(photo("china", (width, height)))
        expected = reference_u8(Image.open(io.BytesIO(data)).convert("RGB")).int()
        runs: dict[str, Callable[[], object]] = {"reference": partial(_reference, reference, data)}
        row: dict[str, dict[str, float]] = {"reference": {"img_per_s": 0.0}}
        for path in PATHS:
            runs[path] = partial(decode_image, data, spec, LIMIT, path=path)
            diff = (decode_image(data, spec, LIMIT, path=path).int() - expected).abs()
            row[path] = {"img_per_s": 0.0, "max_diff_levels": int(diff.max()),
                         "mean_diff_levels": round(float(diff.float().mean()), 4)}
        for _ in range(args.repeats):
            for name, run in runs.items():
                rate = throughput(run, args.seconds, args.threads)
                row[name]["img_per_s"] = max(rate, row[name]["img_per_s"])
        results[f"{width}x{height}"] = {
            "auto_picks": choose_path(Image.open(io.BytesIO(data)), spec), **row}
    print(json.dumps({"threads": args.threads, "cpus": os.cpu_count(),
                      "machine": platform.processor() or platform.machine(),
                      "torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
