"""``rstream score`` throughput next to the bare forward pass, in one run; prints JSON.

    python bench/score_vs_bare.py [--images 128] [--model random:resnet18] [--device auto]
                                  [--batch 64] [--decode-threads 4] [--repeats 3]

It writes ``--images`` JPEGs of 500x375 (photos shipped with scikit-image and scikit-learn,
re-encoded), then measures, on the same device, model, precision and batch size:

- ``bare``: ``Predictor.predict`` on ready uint8 batches (pinned on CUDA), before and after;
- ``decode``: fetch + ``decode_image`` alone on a pool of ``--decode-threads`` threads;
- ``score``: the ``rstream score`` pipeline (``rstream.worker.serving.score.run_score``: listing,
  fetch, decode, batcher, forward, result lines written to a file), timed from the moment the model
  is loaded.

After one warm-up of each, bare passes and score runs alternate ``--repeats`` times, so both
see the same machine load; the ratio is the median of the paired ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import skimage
import sklearn
import torch
from PIL import Image

from rstream.shared.settings import Settings
from rstream.worker.model.device import resolve_device
from rstream.worker.model.loader import load_model
from rstream.worker.model.predict import Predictor
from rstream.worker.model.preprocess import decode_image
from rstream.worker.serving.score import Summary, run_score

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


def bare(predictor: Predictor, batches: list[torch.Tensor]) -> float:
    """Images per second of one pass of ``predict`` over ready batches.

    The pass runs on a thread of its own, as the batcher's forward does: on a CPU, torch's
    intra-op threads behave differently for the main thread (measured here 20% slower on a busy
    2-core machine), which would skew the ratio.
    """
    def one_pass() -> float:
        start = time.perf_counter()
        for batch in batches:
            predictor.predict(batch)
        return sum(len(b) for b in batches) / (time.perf_counter() - start)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(one_pass).result()


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


def score(folder: Path, work: Path, model: str, settings: Settings) -> Summary:
    """One ``rstream score`` run of ``folder``; its images/s excludes the model load."""
    args = argparse.Namespace(source=str(folder), model=model, out=str(work / "out.jsonl"),
                              topk=None)
    summary = run_score(args, settings)
    if summary.failed:
        raise SystemExit(f"{summary.failed} images failed; see {work / 'out.jsonl'}")
    return summary


def paired(predictor: Predictor, batches: list[torch.Tensor], run: Callable[[], Summary],
           repeats: int) -> tuple[list[float], list[Summary]]:
    """Alternating bare passes and score runs, after one warm-up of each."""
    bare(predictor, batches)
    run()
    bare_rates, summaries = [], []
    for _ in range(repeats):
        bare_rates.append(bare(predictor, batches))
        summaries.append(run())
    return bare_rates, summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--model", default="random:resnet18")
    parser.add_argument("--device", default=os.environ.get("RSTREAM_DEVICE", "auto"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--decode-threads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
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
        decode = decode_rates(blobs, predictor, settings, opts.repeats)
        bare_rates, summaries = paired(
            predictor, batches, lambda: score(work / "images", work, opts.model, settings),
            opts.repeats)

    score_rates = [s.images_per_s for s in summaries]
    ratios = [s / b for s, b in zip(score_rates, bare_rates, strict=True)]
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
        "bare_images_per_s": round(statistics.median(bare_rates), 1),
        "score_images_per_s": round(statistics.median(score_rates), 1),
        "ratio_score_to_bare": round(statistics.median(ratios), 3),
        "bare_runs": [round(r, 1) for r in bare_rates],
        "score_runs": [round(r, 1) for r in score_rates],
        "ratios": [round(r, 3) for r in ratios],
        "decode_images_per_s": round(statistics.median(decode), 1),
        "score_last_run_batcher": {k: round(v, 3) if isinstance(v, float) else v
                                   for k, v in summaries[-1].stages.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
