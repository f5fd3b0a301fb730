"""Top-1 agreement of each backend and precision with the fp32 eager forward; prints JSON.

    python -m bench.forward_agreement [--images 300] [--probes 3] [--calib-images 100]
                                      [--variants ort_fp32,ort_int8,compile] [--out FILE]
    python -m bench.forward_agreement --device cuda      # eager_fp16,compile_fp16,cudagraphs_fp16

``--images`` photos (tests/probe.py: the photos shipped with scikit-image and scikit-learn,
cropped, flipped, resized or mirror-tiled, 500x375 JPEGs) are decoded as serving decodes them,
then judged by ``--probes`` probe classifiers (seeded resnet18s whose ``fc`` spreads these very
images over many classes; a random-init ResNet would put them all in one or two classes, and
agree with anything). Per variant and probe: how many images keep the fp32 eager top-1 class,
and the largest difference of any class probability; per variant: the fewest over the probes
and its one-sided 95% Clopper-Pearson lower bound. int8 is calibrated on ``--calib-images``
other photos (another seed), never on the images it is judged on. ``compile`` is
torch.compile with inductor, batch-size buckets as RSTREAM_FORWARD=compile serves them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.report import emit
from rstream.worker.model import quantize
from rstream.worker.model.compiled import CompiledPredictor
from rstream.worker.model.export import onnx_bytes
from rstream.worker.model.loader import LoadedModel
from rstream.worker.model.predict import Predictor
from rstream.worker.model.preprocess import Preprocessing, decode_image, normalize
from tests.probe import Probe, lower_bound, probe_jpegs

SIZE = (500, 375)
CHUNK = 50
CPU_VARIANTS = ("ort_fp32", "ort_int8", "compile")
GPU_VARIANTS = ("eager_fp16", "compile_fp16", "cudagraphs_fp16")

Logits = Callable[[torch.Tensor], torch.Tensor]


def decoded(count: int, seed: int, spec: Preprocessing) -> torch.Tensor:
    """``count`` probe photos as the normalized float batch the model sees."""
    return normalize(torch.stack([decode_image(d, spec, 64_000_000)
                                  for d in probe_jpegs(count, SIZE, seed=seed)]), spec)


def probe_model(probe: Probe, spec: Preprocessing, seed: int) -> LoadedModel:
    """The probe as a plain resnet18 (its trunk with its fitted ``fc``), as rstream loads one."""
    net = copy.deepcopy(probe.trunk)
    net.fc = copy.deepcopy(probe.fc)
    classes = probe.fc.out_features
    return LoadedModel(net.eval(), f"probe:{seed}", [f"c{i}" for i in range(classes)], spec,
                       "resnet18")


def variant(name: str, loaded: LoadedModel, device: torch.device, calibration: torch.Tensor, *,
            compile_backend: str, exported: dict[str, bytes]) -> Logits:
    """The logits function of one backend/precision (``exported``: the probe's ONNX, kept)."""
    if name.startswith("ort_"):
        if "fp32" not in exported:
            exported["fp32"] = onnx_bytes(loaded.module, loaded.preprocessing.crop)
        data = exported["fp32"]
        if name == "ort_int8":
            data = quantize.quantize(data, calibration)
        session = quantize.session(data)
        return lambda x: torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])
    precision = "fp16" if name.endswith("_fp16") else "fp32"
    if name.startswith("eager"):
        return _channels_last(Predictor(loaded, device, precision, 1)._logits)
    forward = name.removesuffix("_fp16")
    torch._dynamo.reset()  # each probe compiles afresh, never past dynamo's cache limit
    return _channels_last(CompiledPredictor(loaded, device, precision, 1, forward=forward,
                                            max_batch=CHUNK,
                                            compile_backend=compile_backend)._logits)


def _channels_last(fn: Logits) -> Logits:
    return lambda x: fn(x.contiguous(memory_format=torch.channels_last))


def logits_of(fn: Logits, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([fn(images[i:i + CHUNK].to(device)).float().cpu()
                          for i in range(0, len(images), CHUNK)])


def measure(images: torch.Tensor, calibration: torch.Tensor, spec: Preprocessing, *,
            probes: int, variants: list[str], device: torch.device,
            compile_backend: str = "inductor") -> dict[str, Any]:
    """Agreement of each variant with the fp32 eager forward, per probe and over them."""
    fitted = [Probe(images, seed=seed) for seed in range(probes)]
    rows: dict[str, Any] = {name: {"top1_agree_per_probe": [], "max_prob_diff_per_probe": []}
                            for name in variants}
    spread = []
    for seed, probe in enumerate(fitted):
        loaded = probe_model(probe, spec, seed)
        reference = torch.softmax(logits_of(Predictor(loaded, torch.device("cpu"), "fp32",
                                                      1)._logits, images, torch.device("cpu")), 1)
        spread.append(len(set(reference.argmax(1).tolist())))
        exported: dict[str, bytes] = {}
        for name in variants:
            started = time.monotonic()
            fn = variant(name, probe_model(probe, spec, seed), device, calibration,
                         compile_backend=compile_backend, exported=exported)
            probs = torch.softmax(logits_of(fn, images, device), 1)
            rows[name]["top1_agree_per_probe"].append(
                int((probs.argmax(1) == reference.argmax(1)).sum()))
            rows[name]["max_prob_diff_per_probe"].append(
                round(float((probs - reference).abs().max()), 5))
            print(f"probe {seed} {name}: {rows[name]['top1_agree_per_probe'][-1]}/"
                  f"{len(images)} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    total = len(images)
    for row in rows.values():
        fewest = min(row["top1_agree_per_probe"])
        row |= {"images": total, "fewest": fewest, "agreement": round(fewest / total, 4),
                "pooled": round(sum(row["top1_agree_per_probe"]) / (total * probes), 4),
                "lower_95_of_fewest": round(lower_bound(fewest, total), 4),
                "max_prob_diff": max(row["max_prob_diff_per_probe"])}
    return {"reference": "eager fp32", "reference_top1_classes_per_probe": spread,
            "results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--probes", type=int, default=3)
    parser.add_argument("--calib-images", type=int, default=100)
    parser.add_argument("--variants", default="", help="default: the device's")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device: the GPU variants need one"}))
        return
    variants = (args.variants.split(",") if args.variants
                else list(GPU_VARIANTS if device.type == "cuda" else CPU_VARIANTS))
    started = time.monotonic()
    spec = Preprocessing()
    images = decoded(args.images, 0, spec)
    calibration = decoded(args.calib_images, 1, spec)
    report = {"images": args.images, "image_size": f"{SIZE[0]}x{SIZE[1]}",
              "probes": args.probes, "calibration_images": args.calib_images,
              "device": str(device), "cpus": os.cpu_count(), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(),
              **measure(images, calibration, spec, probes=args.probes, variants=variants,
                        device=device),
              "seconds": round(time.monotonic() - started, 1)}
    emit(report, args.out)


if __name__ == "__main__":
    main()
