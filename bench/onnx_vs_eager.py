"""The forward pass alone, eager PyTorch vs ONNX Runtime (RSTREAM_BACKEND=onnx), on the CPU.

Prints one JSON object: images/s of each backend per alternated round, their medians, and
the median of the per-round ratios onnx/eager.

    .venv/bin/python bench/onnx_vs_eager.py [--arch resnet18] [--batch 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from rstream.worker.model.loader import load_model
from rstream.worker.model.onnx import make_predictor


def rate(predictor: object, images: torch.Tensor, batches: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        predictor.predict(images)  # type: ignore[attr-defined]
    return batches * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=2, help="batches per timed run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    ref = f"random:{args.arch}"
    predictors = {backend: make_predictor(backend, load_model(ref), cpu, "fp32", 5)
                  for backend in ("eager", "onnx")}
    images = torch.randint(0, 256, (args.batch, 3, 224, 224), dtype=torch.uint8)
    for predictor in predictors.values():
        predictor.predict(images[:8])  # warm-up
    runs: dict[str, list[float]] = {"eager": [], "onnx": []}
    for _ in range(args.rounds):
        for backend, predictor in predictors.items():
            runs[backend].append(round(rate(predictor, images, args.batches), 2))
    ratios = [o / e for o, e in zip(runs["onnx"], runs["eager"], strict=True)]
    print(json.dumps({
        "arch": args.arch, "batch": args.batch, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "runs": runs, "eager_images_per_s": statistics.median(runs["eager"]),
        "onnx_images_per_s": statistics.median(runs["onnx"]),
        "onnx_over_eager": round(statistics.median(ratios), 3)}, indent=2))


if __name__ == "__main__":
    main()
