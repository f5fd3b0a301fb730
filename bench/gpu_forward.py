"""The bare ResNet forward on one device, fp32 and fp16 autocast, per batch size; prints JSON.

    python bench/gpu_forward.py [--device cuda] [--archs resnet18,resnet50]
                                [--batches 64,128,256] [--precisions fp32,fp16] [--seconds 3]

Needs torch and torchvision only (no rstream package), so it runs on a GPU machine that has
nothing else installed. Models have random weights (nothing is downloaded). Inputs are
normalized float batches already on the device; every variant runs in channels_last under
``torch.inference_mode()``, with ``cudnn.benchmark`` on, and is timed with the device
synchronized, after warm-up passes. ``fp16`` means ``torch.autocast(dtype=float16)``
(``bf16`` is accepted too). ``--device cpu --image-size 64 --batches 2 --seconds 0.2`` is a quick
check that the script works without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
import torchvision

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(model: torch.nn.Module, batch: torch.Tensor, precision: str,
                 seconds: float) -> float:
    """Forward passes of ``batch`` for about ``seconds`` after warm-up; images per second."""
    device = batch.device
    dtype = DTYPES.get(precision)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                enabled=dtype is not None):
        for _ in range(3):
            model(batch)
        sync(device)
        passes, start = 0, time.perf_counter()
        while passes < 2 or time.perf_counter() - start < seconds:
            model(batch)
            passes += 1
            if passes % 4 == 0:
                sync(device)
        sync(device)
        return passes * len(batch) / (time.perf_counter() - start)


def run(arch: str, batch_size: int, precision: str, opts: argparse.Namespace,
        device: torch.device) -> dict[str, Any]:
    model = getattr(torchvision.models, arch)(weights=None).eval()
    model = model.to(device).to(memory_format=torch.channels_last)
    size = opts.image_size
    batch = torch.randn(batch_size, 3, size, size, device=device)
    batch = batch.contiguous(memory_format=torch.channels_last)
    row: dict[str, Any] = {"arch": arch, "batch": batch_size, "precision": precision}
    try:
        row["images_per_s"] = round(images_per_s(model, batch, precision, opts.seconds), 1)
    except torch.cuda.OutOfMemoryError:
        row["error"] = "out of memory"
    if device.type == "cuda":
        row["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--batches", default="64,128,256")
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per variant")
    opts = parser.parse_args()
    device = torch.device(opts.device)
    torch.backends.cudnn.benchmark = True
    rows = []
    for arch in opts.archs.split(","):
        for precision in opts.precisions.split(","):
            for batch in (int(b) for b in opts.batches.split(",")):
                rows.append(run(arch, batch, precision, opts, device))
                print(f"{arch:9} {precision:5} batch {batch:4}: "
                      f"{rows[-1].get('images_per_s', rows[-1].get('error'))} images/s",
                      file=sys.stderr)
    print(json.dumps({
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "image_size": opts.image_size, "channels_last": True, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
