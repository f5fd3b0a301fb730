"""The fastest forward on each device, measured side by side in one run; prints JSON.

    python -m bench.forward [--archs resnet18,resnet50] [--batches 1,64,256] [--rounds 2]
                            [--out FILE]                               # CPU
    python -m bench.forward --device cuda [--batches 64,256]           # GPU
    python -m bench.forward --device cuda --smoke                      # rehearsal on the CPU

CPU: eager fp32 (rstream's ``Predictor`` forward), ONNX Runtime fp32 and ONNX Runtime int8
(static QDQ quantization, worker/model/quantize.py, calibrated on ``--calib-images`` photos of
tests/probe.py). GPU: eager fp16 autocast, ``torch.compile`` (inductor) and CUDA graphs
(worker/model/compiled.py, one bucket: the batch size). Every variant gets the same normalized
float batch (random pixels: speed does not depend on them), is warmed up, then timed in
alternated rounds, ``--iterations`` forwards a round (default: enough for about 32 images);
the ratios are medians of the per-round ratios. Models have random weights (nothing is
downloaded). ``--smoke`` runs the GPU suite's code on the CPU (fp32, compile only, tiny
sizes), so the device script is rehearsed before a GPU is at hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.report import emit
from rstream.worker.model import quantize
from rstream.worker.model.compiled import CompiledPredictor
from rstream.worker.model.export import onnx_bytes
from rstream.worker.model.loader import LoadedModel, load_model
from rstream.worker.model.predict import Predictor
from rstream.worker.model.preprocess import Preprocessing, decode_image, normalize
from tests.probe import probe_jpegs

Forward = Callable[[torch.Tensor], Any]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(forward: Forward, x: torch.Tensor, iterations: int) -> float:
    """Images per second of ``iterations`` forwards of ``x``."""
    sync(x.device)
    start = time.perf_counter()
    for _ in range(iterations):
        forward(x)
    sync(x.device)
    return iterations * len(x) / (time.perf_counter() - start)


def compare(forwards: dict[str, Forward], x: torch.Tensor, rounds: int,
            iterations: int) -> dict[str, Any]:
    """Alternated rounds of every forward on ``x``: images/s per round and medians."""
    with torch.inference_mode():
        for forward in forwards.values():
            forward(x)  # warm-up
        runs: dict[str, list[float]] = {name: [] for name in forwards}
        for _ in range(rounds):
            for name, forward in forwards.items():
                runs[name].append(round(timed(forward, x, iterations), 2))
    return {"batch": len(x), "iterations": iterations, "runs": runs,
            "images_per_s": {name: statistics.median(r) for name, r in runs.items()}}


def ratio(row: dict[str, Any], top: str, bottom: str) -> float:
    return round(statistics.median(a / b for a, b in zip(row["runs"][top], row["runs"][bottom],
                                                         strict=True)), 3)


def calibration(loaded: LoadedModel, count: int) -> torch.Tensor:
    return normalize(torch.stack([decode_image(d, loaded.preprocessing, 64_000_000)
                                  for d in probe_jpegs(count, (500, 375), seed=7)]),
                     loaded.preprocessing)


def cpu_suite(arch: str, opts: argparse.Namespace) -> dict[str, Any]:
    cpu = torch.device("cpu")
    loaded = load_model(f"random:{arch}")
    eager = Predictor(loaded, cpu, "fp32", 5)
    fp32 = onnx_bytes(loaded.module, 224)
    began = time.monotonic()
    int8 = quantize.quantize(fp32, calibration(loaded, opts.calib_images))
    quantize_s = round(time.monotonic() - began, 1)
    sessions = {"ort_fp32": quantize.session(fp32), "ort_int8": quantize.session(int8)}

    def ort(name: str) -> Forward:
        return lambda x: sessions[name].run(None, {"x": x.numpy()})

    def eager_fp32(x: torch.Tensor) -> Any:  # channels_last, as Predictor serves it
        return eager._logits(x.contiguous(memory_format=torch.channels_last))

    forwards = {"eager_fp32": eager_fp32, "ort_fp32": ort("ort_fp32"),
                "ort_int8": ort("ort_int8")}
    rows = []
    for batch in opts.batches:
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        row = compare(forwards, x, opts.rounds, opts.iterations or max(1, 32 // batch))
        row["int8_over_ort_fp32"] = ratio(row, "ort_int8", "ort_fp32")
        row["ort_fp32_over_eager"] = ratio(row, "ort_fp32", "eager_fp32")
        row["int8_over_eager"] = ratio(row, "ort_int8", "eager_fp32")
        print(f"{arch} batch {batch}: {row['images_per_s']} int8/ort_fp32 "
              f"{row['int8_over_ort_fp32']}", file=sys.stderr)
        rows.append(row)
    return {"arch": arch, "device": "cpu", "quantize_s": quantize_s,
            "calibration_images": opts.calib_images, "rows": rows}


def gpu_suite(arch: str, opts: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """eager fp16, torch.compile and CUDA graphs; with ``--smoke``, fp32 and compile on the
    CPU at a tiny size, to rehearse the script."""
    loaded = load_model(f"random:{arch}")
    precision = "fp32" if opts.smoke else "fp16"
    crop = 64 if opts.smoke else 224
    loaded.preprocessing = Preprocessing(resize=crop, crop=crop)
    eager = Predictor(loaded, device, precision, 5)
    rows = []
    for batch in opts.batches:
        forwards: dict[str, Forward] = {"eager_" + precision: eager._logits}
        warmups: dict[str, float] = {}
        kinds = ("compile",) if opts.smoke else ("compile", "cudagraphs")
        for kind in kinds:
            fresh = load_model(f"random:{arch}")
            fresh.preprocessing = loaded.preprocessing  # warm up at the size that is timed
            compiled = CompiledPredictor(fresh, device, precision, 5, forward=kind,
                                         max_batch=batch)
            warmups[kind] = compiled.warmup["per_bucket_s"][str(batch)]
            forwards[kind] = compiled._logits
        x = torch.randn(batch, 3, crop, crop, device=device).contiguous(
            memory_format=torch.channels_last)
        row = compare(forwards, x, opts.rounds, opts.iterations or max(3, 512 // batch))
        row["warmup_s"] = warmups
        for kind in kinds:
            row[f"{kind}_over_eager"] = ratio(row, kind, "eager_" + precision)
        print(f"{arch} batch {batch}: {row['images_per_s']}", file=sys.stderr)
        rows.append(row)
    return {"arch": arch, "device": str(device), "precision": precision, "crop": crop,
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--batches", default="")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=0, help="forwards a round")
    parser.add_argument("--calib-images", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="rehearse the GPU suite on the CPU")
    parser.add_argument("--out", help="also write the JSON here")
    opts = parser.parse_args()
    default_batches = "2" if opts.smoke else ("1,64,256")
    opts.batches = [int(b) for b in (opts.batches or default_batches).split(",")]
    started = time.monotonic()
    report: dict[str, Any] = {"device": opts.device, "smoke": opts.smoke,
                              "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                              "machine": platform.processor() or platform.machine(),
                              "torch": torch.__version__, "rounds": opts.rounds}
    if opts.device == "cuda" and not opts.smoke:
        if not torch.cuda.is_available():
            report["skipped"] = "no CUDA device: the GPU part needs one"
        else:
            torch.backends.cudnn.benchmark = True
            device = torch.device("cuda")
            report["gpu"] = torch.cuda.get_device_name(device)
            report["results"] = [gpu_suite(a, opts, device) for a in opts.archs.split(",")]
    elif opts.smoke:
        report["results"] = [gpu_suite(a, opts, torch.device("cpu"))
                             for a in opts.archs.split(",")]
    else:
        import onnxruntime

        report["onnxruntime"] = onnxruntime.__version__
        report["results"] = [cpu_suite(a, opts) for a in opts.archs.split(",")]
    report["seconds"] = round(time.monotonic() - started, 1)
    emit(report, opts.out)


if __name__ == "__main__":
    main()
