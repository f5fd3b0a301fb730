"""Top-1 agreement of each decode path with torchvision's reference transform; prints JSON.

    python -m bench.decode_agreement [--images 300] [--probes 5] [--out FILE]
    python -m bench.decode_agreement --speed-only [--speed-images 32] [--repeats 5]

For each size, ``--images`` JPEGs (``tests/probe.py``: the photos shipped with scikit-image
and scikit-learn, cropped, flipped, resized or mirror-tiled) go through the reference
(``Resize(256)`` antialiased on the PIL image, ``CenterCrop(224)``, ``ToTensor``,
``Normalize``) and through ``decode_image`` on each path that applies, then through
``--probes`` probes (resnet18s with other seeds whose ``fc`` spreads these images over many
classes, each fitted on the reference inputs of all sizes together). Per path and probe: how
many images keep the reference's top-1 class; per path: the fewest over the probes, its
one-sided 95% Clopper-Pearson lower bound, and the input difference in normalized units.
``draft@M`` is the draft path with ``DRAFT_MIN_RESIZE=M`` (a resize of at least M x left
after the DCT scaling), listed where it scales the image; ``draft@1`` is the draft target
before issue 17. ``auto`` is what ``choose_path`` picks. Speeds: images/s of each path on
one thread over the first ``--speed-images`` images, best of ``--repeats`` rounds in turn.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from PIL import Image
from torchvision import transforms as T

from bench.report import emit
from rstream.worker.model import preprocess
from rstream.worker.model.preprocess import (
    Preprocessing,
    choose_path,
    decode_image,
    draft_scale,
    normalize,
)
from tests.probe import Probe, lower_bound, probe_jpegs

SIZES = ((500, 375), (1024, 768), (1920, 1080), (4000, 3000))
LIMIT = 64_000_000
SPEC = Preprocessing()
MARGINS = (1, 2, 4)  # DRAFT_MIN_RESIZE values compared; 1 is the draft target before issue 17
_REFERENCE_U8 = T.Compose([T.Resize(SPEC.resize, antialias=True), T.CenterCrop(SPEC.crop),
                           T.PILToTensor()])


def reference_u8(data: bytes) -> torch.Tensor:
    """The reference's pixels before ToTensor + Normalize, which ``normalize`` reproduces
    bit for bit."""
    return _REFERENCE_U8(Image.open(io.BytesIO(data)).convert("RGB"))


@contextmanager
def draft_margin(margin: int) -> Iterator[None]:
    """Decode with another DRAFT_MIN_RESIZE for a while."""
    before = preprocess.DRAFT_MIN_RESIZE
    preprocess.DRAFT_MIN_RESIZE = margin
    try:
        yield
    finally:
        preprocess.DRAFT_MIN_RESIZE = before


def paths_for(size: tuple[int, int]) -> list[str]:
    """exact, tensor, draft at each margin that scales this size, and auto."""
    names = ["exact", "tensor"]
    for margin in MARGINS:
        with draft_margin(margin):
            if draft_scale(*size, SPEC) >= 2:
                names.append(f"draft@{margin}")
    return [*names, "auto"]


def decoder(path: str) -> Callable[[bytes], torch.Tensor]:
    if path.startswith("draft@"):
        return partial(_draft, margin=int(path.removeprefix("draft@")))
    return partial(decode_image, spec=SPEC, max_pixels=LIMIT, path=path)


def _draft(data: bytes, *, margin: int) -> torch.Tensor:
    with draft_margin(margin):
        return decode_image(data, SPEC, LIMIT, path="draft")


def apply(fn: Callable[[bytes], object], datas: list[bytes]) -> None:
    for data in datas:
        fn(data)


def best_rates(datas: list[bytes], paths: list[str], repeats: int) -> dict[str, float]:
    """Images/s of the reference and of each path, the best of ``repeats`` rounds in turn."""
    runs = {"reference": partial(apply, reference_u8, datas)}
    runs |= {path: partial(apply, decoder(path), datas) for path in paths}
    rates = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            rates[name] = max(rates[name], len(datas) / (time.perf_counter() - started))
    return {name: round(rate, 1) for name, rate in rates.items()}


def agreement_row(pixels: torch.Tensor, reference: torch.Tensor,
                  probes: list[tuple[Probe, torch.Tensor]]) -> dict[str, object]:
    batch, expected_input = normalize(pixels, SPEC), normalize(reference, SPEC)
    agree = [int((probe.top1(batch) == expected).sum()) for probe, expected in probes]
    total = len(pixels)
    diff = (batch - expected_input).abs()
    return {"top1_agree_per_probe": agree, "images": total, "fewest": min(agree),
            "pooled": round(sum(agree) / (total * len(agree)), 4),
            "lower_95_of_fewest": round(lower_bound(min(agree), total), 4),
            "input_max": round(float(diff.max()), 4), "input_mean": round(float(diff.mean()), 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="images per size")
    parser.add_argument("--probes", type=int, default=5, help="probe seeds (0, 1, ...)")
    parser.add_argument("--speed-images", type=int, default=32, help="images timed per path")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds; the best counts")
    parser.add_argument("--speed-only", action="store_true", help="measure speeds, not agreement")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    decoded: dict[str, dict[str, torch.Tensor]] = {}  # uint8 per size and path, reference too
    speeds: dict[str, dict[str, float]] = {}
    picks: dict[str, str] = {}
    for size in SIZES:
        name = f"{size[0]}x{size[1]}"
        count = args.speed_images if args.speed_only else args.images
        print(f"{name}: making {count} JPEGs", file=sys.stderr)
        datas = probe_jpegs(count, size, seed=args.seed)
        paths = paths_for(size)
        picks[name] = choose_path(Image.open(io.BytesIO(datas[0])), SPEC)
        speeds[name] = best_rates(datas[:args.speed_images], paths, args.repeats)
        if not args.speed_only:
            decoded[name] = {"reference": torch.stack([reference_u8(d) for d in datas])}
            decoded[name] |= {p: torch.stack([decoder(p)(d) for d in datas]) for p in paths}
        del datas
    results: dict[str, dict[str, object]] = {
        name: {"auto_picks": picks[name], "reference_img_per_s": speeds[name]["reference"]}
        for name in speeds}
    for name, rates in speeds.items():
        for path, rate in rates.items():
            if path != "reference":
                results[name][path] = {"img_per_s": rate,
                                       "speed_vs_exact": round(rate / rates["exact"], 2)}
    if decoded:
        references = torch.cat([normalize(by_path["reference"], SPEC)
                                for by_path in decoded.values()])
        probes = [Probe(references, seed=seed) for seed in range(args.probes)]
        for name, by_path in decoded.items():
            expected = [(probe, probe.top1(normalize(by_path["reference"], SPEC)))
                        for probe in probes]
            results[name]["reference_top1_classes_per_probe"] = [
                len(set(top.tolist())) for _, top in expected]
            for path, pixels in by_path.items():
                if path != "reference":
                    row = results[name][path]
                    assert isinstance(row, dict)
                    row |= agreement_row(pixels, by_path["reference"], expected)
            print(f"{name}: auto={picks[name]} " + ", ".join(
                f"{p} {r['top1_agree_per_probe']}" for p, r in results[name].items()
                if isinstance(r, dict) and "top1_agree_per_probe" in r), file=sys.stderr)
    report = {"images_per_size": 0 if args.speed_only else args.images,
              "probes": 0 if args.speed_only else args.probes, "seed": args.seed,
              "draft_min_resize": preprocess.DRAFT_MIN_RESIZE, "threads": 1,
              "speed_images": args.speed_images, "repeats": args.repeats,
              "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "seconds": round(time.monotonic() - started, 1),
              "results": results}
    emit(report, args.out)


if __name__ == "__main__":
    main()
