"""CPU decode in threads of one process against a pool of processes; prints JSON.

    .venv/bin/python -m bench.decode_pool [--workers 1,2] [--repeats 3] [--out FILE]

The question of the GPU issue's second point, measured on this machine's cores: does moving the CPU
decode (``rstream.worker.model.preprocess.decode_image``, the path rstream picks by itself) into
worker processes that hand uint8 tensors back through shared memory decode more images per second
than threads of one process? Each way decodes the same JPEGs (made from the photos that ship with
scikit-image and scikit-learn) into ``[3, 224, 224]`` uint8 tensors:

- ``threads``: a ``ThreadPoolExecutor`` of N threads (what the worker's fetch threads do today;
  Pillow and ``decode_jpeg`` release the GIL while they decode);
- ``processes``: a ``torch.multiprocessing`` pool of N processes, started before timing; each
  result tensor comes back through shared memory (torch's reductions), so only a handle is
  pickled.

The two alternate ``--repeats`` times in turn per size and N, and the medians are reported
with the ratio processes/threads. Decoding alone is measured: in a worker the forward pass
shares the same cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.multiprocessing as mp

from bench.report import emit, machine
from rstream.worker.model.preprocess import Preprocessing, decode_image
from tests.images import PHOTOS, jpeg_bytes, photo

SIZES = ((500, 375), (1920, 1080))
MAX_PIXELS = 64_000_000
SPEC = Preprocessing()


def _decode(data: bytes) -> torch.Tensor:
    return decode_image(data, SPEC, MAX_PIXELS)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one core per process: the pool is the parallelism


def jpegs(size: tuple[int, int], count: int) -> list[bytes]:
    """``count`` JPEGs of ``size``, cycling over the shipped photos (each encoded once)."""
    distinct = [jpeg_bytes(photo(name, size).convert("RGB")) for name in sorted(PHOTOS)]
    return [distinct[i % len(distinct)] for i in range(count)]


def timed(run: Callable[[list[bytes]], Iterable[torch.Tensor]], blobs: list[bytes]) -> float:
    """Images per second of ``run`` over ``blobs``; checks every result's shape."""
    start = time.perf_counter()
    results = list(run(blobs))
    seconds = time.perf_counter() - start
    assert all(t.shape == (3, SPEC.crop, SPEC.crop) and t.dtype == torch.uint8 for t in results)
    return len(blobs) / seconds


def measure(blobs: list[bytes], workers: int, repeats: int) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"threads": [], "processes": []}
    with ThreadPoolExecutor(workers) as threads, \
            mp.get_context("fork").Pool(workers, initializer=_init_worker) as processes:
        ways: dict[str, Callable[[list[bytes]], Iterable[torch.Tensor]]] = {
            "threads": lambda b: threads.map(_decode, b),
            "processes": lambda b: processes.imap(_decode, b, chunksize=4)}
        for run in ways.values():  # warm up: imports, first decodes, page faults
            list(run(blobs[:8]))
        for r in range(repeats):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for way in order:
                rates[way].append(timed(ways[way], blobs))
    threads_rate = statistics.median(rates["threads"])
    processes_rate = statistics.median(rates["processes"])
    return {"workers": workers, "images": len(blobs),
            "threads_images_per_s": round(threads_rate, 1),
            "processes_images_per_s": round(processes_rate, 1),
            "processes_to_threads": round(processes_rate / threads_rate, 3),
            "per_repeat": {k: [round(v, 1) for v in vs] for k, vs in rates.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated pool sizes")
    parser.add_argument("--images", type=int, default=256, help="JPEGs of 500x375 per round "
                        "(a quarter as many of 1920x1080)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for width, height in SIZES:
        count = opts.images if width < 1000 else max(8, opts.images // 4)
        blobs = jpegs((width, height), count)
        for workers in (int(n) for n in opts.workers.split(",")):
            row = {"size": f"{width}x{height}", **measure(blobs, workers, opts.repeats)}
            print(f"{row['size']} x{workers}: threads {row['threads_images_per_s']} img/s, "
                  f"processes {row['processes_images_per_s']} img/s "
                  f"({row['processes_to_threads']}x)", flush=True, file=sys.stderr)
            results.append(row)
    emit({"bench": "decode_pool", "machine": machine(), "torch": torch.__version__,
          "repeats": opts.repeats, "results": results}, opts.out)


if __name__ == "__main__":
    main()
