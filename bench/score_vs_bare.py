"""``rstream score`` throughput next to the bare forward pass, in one run; prints JSON.

    python bench/score_vs_bare.py [--images 128] [--model random:resnet18] [--device auto]
                                  [--batch 64] [--decode-threads 4] [--repeats 3]

It writes ``--images`` JPEGs of 500x375 (photos shipped with scikit-image and scikit-learn,
re-encoded), then measures, on the same device, model, precision and batch size:

- ``bare``: ``Predictor.predict`` on ready uint8 batches (pinned on CUDA), before and after;
- ``decode``: fetch + ``decode_image`` alone on a pool of ``--decode-threads`` threads;
- ``score``: the ``rstream score`` pipeline (``worker.cli.run_score``: listing, fetch, decode,
  batcher, forward, result lines written to a file), timed from the moment the model is loaded.

Each figure is the median of ``--repeats`` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import skimage
import sklearn
import torch
from PIL import Image

from shared.settings import Settings
from worker.cli import run_score
from worker.device import resolve_device
from worker.models import load_model
from worker.predict import Predictor
from worker.preprocess import decode_image

PHOTOS = [Path(skimage.__file__).parent / "data" / name for name in (
    "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
    "hubble_deep_field.jpg", "retina.jpg", "brick.png", "grass.png", "color.png")]
PHOTOS += [Path(sklearn.__file__).parent / "datasets" / "images" / n
           for n in ("china.jpg", "flower.jpg")]
SIZE = (500, 375)


def make_jpegs(folder: Path, count: int) -> list[bytes]:
    """``count`` 500x375 JPEGs in ``folder``: the photos, flipped and shifted to vary them."""
    folder.mkdir(parents=True)
    blobs = []
    for i in range(count):
        photo = Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB")
        shift = (i // len(PHOTOS)) * 7 % 60
        image = photo.resize((SIZE[0] + shift, SIZE[1] + shift)).crop((shift, shift,
                                                                       shift + SIZE[0],
                                                                       shift + SIZE[1]))
        if i // len(PHOTOS) % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        blobs.append(out.getvalue())
        (folder / f"img{i:05d}.jpg").write_bytes(out.getvalue())
    return blobs


def bare(predictor: Predictor, batches: list[torch.Tensor], repeats: int) -> list[float]:
    predictor.predict(batches[0])  # warm-up
    images = sum(len(b) for b in batches)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            predictor.predict(batch)
        rates.append(images / (time.perf_counter() - start))
    return rates


def decode_rates(blobs: list[bytes], predictor: Predictor, settings: Settings,
                 repeats: int) -> list[float]:
    spec = predictor.preprocessing
    rates = []
    with ThreadPoolExecutor(settings.decode_threads) as pool:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            list(pool.map(lambda b: decode_image(b, spec, settings.max_image_pixels), blobs))
            rates.append(len(blobs) / (time.perf_counter() - start))
    return rates[1:]


def score_rates(folder: Path, work: Path, model: str, settings: Settings,
                repeats: int) -> tuple[list[float], dict[str, Any]]:
    args = argparse.Namespace(source=str(folder), model=model, out=str(work / "out.jsonl"),
                              topk=None)
    rates, stages = [], {}
    for run in range(repeats + 1):
        summary = run_score(args, settings)
        if summary.failed:
            raise SystemExit(f"{summary.failed} images failed; see {work / 'out.jsonl'}")
        if run:
            rates.append(summary.images_per_s)
            stages = summary.stages
    return rates, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--model", default="random:resnet18")
    parser.add_argument("--device", default=os.environ.get("RSTREAM_DEVICE", "auto"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--decode-threads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rstream-bench-") as tmp:
        work = Path(tmp)
        settings = Settings.from_env(
            storage_root=str(work / "root"), device=opts.device, max_batch=opts.batch,
            decode_threads=opts.decode_threads, log_level="warning")
        blobs = make_jpegs(work / "images", opts.images)
        device = resolve_device(settings.device)
        predictor = Predictor(load_model(opts.model), device, settings.precision, settings.topk)
        tensors = [decode_image(b, predictor.preprocessing, settings.max_image_pixels)
                   for b in blobs]
        batches = [predictor.collate(tensors[i:i + opts.batch])
                   for i in range(0, len(tensors), opts.batch)]
        bare_before = bare(predictor, batches, max(opts.repeats, 5))
        decode = decode_rates(blobs, predictor, settings, opts.repeats)
        score, stages = score_rates(work / "images", work, opts.model, settings, opts.repeats)
        bare_after = bare(predictor, batches, max(opts.repeats, 5))

    bare_median = statistics.median(bare_before + bare_after)
    score_median = statistics.median(score)
    print(json.dumps({
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "model": opts.model,
        "precision": settings.precision,
        "autocast": str(predictor.dtype),
        "images": opts.images,
        "image_size": f"{SIZE[0]}x{SIZE[1]}",
        "batch": opts.batch,
        "decode_threads": settings.decode_threads,
        "bare_images_per_s": round(bare_median, 1),
        "bare_runs": [round(r, 1) for r in bare_before + bare_after],
        "decode_images_per_s": round(statistics.median(decode), 1),
        "score_images_per_s": round(score_median, 1),
        "score_runs": [round(r, 1) for r in score],
        "ratio_score_to_bare": round(score_median / bare_median, 3),
        "score_last_run_batcher": {k: round(v, 3) if isinstance(v, float) else v
                                   for k, v in stages.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
