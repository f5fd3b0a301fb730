"""The GPU decode issue's measurements in one run, one JSON file; bench/gpu_e2e.sh starts it.

    python -m bench.gpu_e2e [--smoke] [--out FILE]

On a CUDA machine (the prepared device run), in this order, each step with its own time limit
so that one failure leaves the others' figures:

1. ``forward``: the bare forward, batch 256, channels_last, fp16, resnet18 and resnet50
   (bench/gpu_forward.py).
2. ``repeat_check``: one batch of JPEGs decoded ``--repeats`` (200) times by the batched device
   path (worker/model/batch_decode.py); every output must equal the first (pytorch/vision
   issue 9606: the CUDA decode wrote into memory its caller's stream still used).
3. ``agreement``: top-1 agreement of the device path with torchvision's reference transform
   on probe images (tests/probe.py) at 500x375 and 1920x1080.
4. ``e2e``: ``rstream submit --wait`` through a real ``redis-server`` and ``rstream worker``
   over local storage (bench/e2e.py), for resnet18 and resnet50 in fp16, at both sizes, with
   JPEGs decoded on the CPU and on the GPU, next to the bare forward and (with CPU decode)
   the plain ``DataLoader`` loop (``num_workers`` = cores, ``pin_memory``), with the GPU's
   utilization sampled through NVML during each run.
5. ``cuda_tests``: the test suite's ``gpu`` tests (pytest ``-m gpu``), when pytest is there.

``--smoke`` runs every step on this CPU machine with tiny sizes and ``device=cpu``, the GPU
decode replaced by the same code on the CPU (``RSTREAM_DECODE_DEVICE=batched``), resnet18
only and the e2e step at 500x375 only (each code path once): tests/unit/test_gpu_e2e.py runs
it, so the script is known to work before any GPU time is spent. Smoke figures are not
GPU figures; the JSON says ``"smoke": true``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.report import emit

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"500x375": (500, 375), "1920x1080": (1920, 1080)}
TARGETS = {"resnet50_500x375_images_per_s": 5000, "resnet18_500x375_images_per_s": 8000,
           "resnet50_to_bare": 0.5, "to_dataloader": 1.5, "agreement": 0.99}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--repeats", type=int, default=200, help="decodes of one batch")
    opts = parser.parse_args(argv)
    opts.device = "cpu" if opts.smoke else "cuda"
    opts.gpu_decode = "batched" if opts.smoke else "cuda"
    opts.images = {"500x375": 8, "1920x1080": 4} if opts.smoke else \
        {"500x375": 20_000, "1920x1080": 5_000}
    opts.probe_images = 8 if opts.smoke else 300
    opts.batch = 4 if opts.smoke else 256
    if opts.smoke:
        opts.archs, opts.repeats = "resnet18", 3
    return opts


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    report: dict[str, Any] = {"smoke": opts.smoke, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                             time.gmtime())}
    report["machine"] = _machine()
    report["forward"] = _step("forward", 240, _forward, opts)
    report["repeat_check"] = _step("repeat_check", 120, _repeat_check, opts)
    report["agreement"] = _step("agreement", 240, _agreement, opts)
    report["e2e"] = _step("e2e", 1500, _e2e, opts)
    report["cuda_tests"] = _step("cuda_tests", 300, _cuda_tests, opts)
    report["targets"] = _targets(report)
    emit(report, opts.out)


def _step(name: str, limit_s: int, run: Any, opts: argparse.Namespace) -> dict[str, Any]:
    """One step's figures, or the reason it has none; never raises."""
    print(f"gpu_e2e: {name} (limit {limit_s} s)", file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        result: dict[str, Any] = run(opts, limit_s)
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def _machine() -> dict[str, Any]:
    import torch
    import torchvision
    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "cpu_count": os.cpu_count()}


def _python(args: list[str], limit_s: int, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=limit_s, env={**os.environ, **(env or {})}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} exited {done.returncode}: "
                           f"{done.stderr.strip()[-1500:]}")
    return done.stdout


def _forward(opts: argparse.Namespace, limit_s: int) -> dict[str, Any]:
    args = ["bench/gpu_forward.py", "--device", opts.device, "--archs", opts.archs,
            "--batches", str(opts.batch), "--precisions", "fp32" if opts.smoke else "fp16",
            "--seconds", "0.2" if opts.smoke else "3"]
    if opts.smoke:
        args += ["--image-size", "64"]
    result: dict[str, Any] = json.loads(_python(args, limit_s))
    return result


def _raws(datas: list[bytes]) -> list[Any]:
    from rstream.worker.model.batch_decode import Raw
    return [Raw(data, 100_000_000) for data in datas]


def _repeat_check(opts: argparse.Namespace, limit_s: int) -> dict[str, Any]:
    import torch

    from rstream.worker.model.batch_decode import preprocess_batch
    from rstream.worker.model.preprocess import Preprocessing
    device, spec = torch.device(opts.device), Preprocessing()
    from tests.probe import probe_jpegs
    raws = _raws(probe_jpegs(4 if opts.smoke else 64, SIZES["1920x1080"]))
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    first, _ = preprocess_batch(raws, spec, device, dtype=dtype, stream=stream)
    assert first is not None
    first = first.clone()
    differing = []
    for repeat in range(1, opts.repeats):
        batch, _ = preprocess_batch(raws, spec, device, dtype=dtype, stream=stream)
        # Launch work on the model's stream right away, as the forward does.
        scratch = torch.empty_like(first).normal_()
        if batch is None or not torch.equal(batch, first):
            differing.append(repeat)
        del scratch
    return {"images": len(raws), "repeats": opts.repeats, "differing_repeats": differing[:20],
            "differing": len(differing), "ok": not differing}


def _agreement(opts: argparse.Namespace, limit_s: int) -> dict[str, Any]:
    import torch

    from rstream.worker.model.batch_decode import preprocess_batch
    from rstream.worker.model.preprocess import Preprocessing
    from tests.probe import Probe, lower_bound, probe_jpegs, reference
    device, spec = torch.device(opts.device), Preprocessing()
    datas = {name: probe_jpegs(opts.probe_images, size) for name, size in SIZES.items()}
    references = {name: torch.stack([reference(d) for d in batch]) for name, batch in datas.items()}
    probe = Probe(torch.cat(list(references.values())))
    result: dict[str, Any] = {}
    for name, batch in datas.items():
        expected = probe.top1(references[name])
        got = []
        for start in range(0, len(batch), 64):
            x, errors = preprocess_batch(_raws(batch[start:start + 64]), spec, device,
                                         memory_format=torch.contiguous_format)
            assert x is not None and not any(errors), errors
            got.append(probe.top1(x.float().cpu()))
        agree = int((torch.cat(got) == expected).sum())
        result[name] = {"images": len(batch), "agree": agree,
                        "share": round(agree / len(batch), 4),
                        "lower_bound_95": round(lower_bound(agree, len(batch)), 4)}
    return result


def _e2e(opts: argparse.Namespace, limit_s: int) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    runs: dict[str, Any] = {}
    stop_at = time.monotonic() + limit_s
    sizes = ["500x375"] if opts.smoke else list(SIZES)  # smoke: each code path once
    # the JPEGs of each size are made once, in the first run, and linked into the others
    with tempfile.TemporaryDirectory(prefix="rstream-e2e-images-") as cache:
        for arch in opts.archs.split(","):
            for size in sizes:
                for decode in ("cpu", opts.gpu_decode):
                    key = f"{arch}_{size}_{decode}"
                    left = int(stop_at - time.monotonic())
                    if left < 30:
                        runs[key] = {"error": "no time left in the e2e step"}
                        continue
                    args = ["-m", "bench.e2e", "--storage", "local", "--device", opts.device,
                            "--arch", arch, "--size", size, "--images", str(opts.images[size]),
                            "--decode-device", decode, "--repeats", "1", "--overhead-images", "0",
                            "--max-batch", str(opts.batch), "--chunk-size", str(opts.batch),
                            "--bare-images", str(min(opts.images[size], 2 * opts.batch)),
                            "--loader-workers", str(cores), "--images-cache", str(cache)]
                    if not opts.smoke:
                        args += ["--precision", "fp16", "--concurrency", "4",
                                 "--decode-threads", str(max(1, cores - 2)), "--torch-threads", "4"]
                    if decode != "cpu":
                        args.append("--no-dataloader")  # the loop does not change with our decode
                    with _Utilization() as gpu:
                        try:
                            out = json.loads(_python(args, min(left, 600)))
                            runs[key] = {"summary": out["summary"], "utilization": gpu.summary()}
                        except Exception as exc:
                            runs[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    return runs


class _Utilization:
    """The GPU's utilization, sampled through NVML twice a second while in the block."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self.reason = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _Utilization:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"unavailable": self.reason or "no samples"}
        return {"mean_percent": round(sum(self.samples) / len(self.samples), 1),
                "max_percent": max(self.samples), "samples": len(self.samples)}

    def _sample(self) -> None:
        try:
            import pynvml
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:  # no driver, no nvidia-ml-py: no figure, and why
            self.reason = f"NVML: {type(exc).__name__}: {exc}"
            return
        while not self._stop.wait(0.5):
            self.samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))


def _cuda_tests(opts: argparse.Namespace, limit_s: int) -> dict[str, Any]:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"skipped": "pytest is not installed here"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-m", "gpu", "tests/unit"], cwd=ROOT, capture_output=True, text=True,
                          timeout=limit_s, check=False)
    return {"exit": done.returncode, "tail": done.stdout.strip().splitlines()[-3:]}


def _targets(report: dict[str, Any]) -> dict[str, Any]:
    """Each target of the issue with the figure measured (None: not measured) and whether it
    holds. In smoke mode nothing is judged: CPU figures say nothing of a GPU."""
    if report["smoke"]:
        return {"judged": False, "reason": "smoke run on the CPU"}
    e2e = report.get("e2e", {})

    def rate(key: str) -> float | None:
        run = e2e.get(key, {}).get("summary")
        return run["images_per_s"]["rstream"] if run else None

    def to(key: str, other: str) -> float | None:
        run = e2e.get(key, {}).get("summary")
        return run[other] if run else None

    figures = {
        "resnet50_500x375_images_per_s": rate("resnet50_500x375_cuda"),
        "resnet18_500x375_images_per_s": rate("resnet18_500x375_cuda"),
        "resnet50_to_bare": to("resnet50_500x375_cuda", "rstream_to_bare"),
        "agreement": min((v["share"] for v in report.get("agreement", {}).values()
                          if isinstance(v, dict) and "share" in v), default=None),
    }
    for arch in ("resnet18", "resnet50"):
        for size in SIZES:
            gpu, cpu = rate(f"{arch}_{size}_cuda"), e2e.get(f"{arch}_{size}_cpu", {})
            loader = cpu.get("summary", {}).get("images_per_s", {}).get("dataloader")
            figures[f"{arch}_{size}_to_dataloader"] = round(gpu / loader, 3) \
                if gpu and loader else None
    judged = {}
    for name, value in figures.items():
        target = TARGETS.get(name, TARGETS["to_dataloader"] if "dataloader" in name else None)
        judged[name] = {"measured": value, "target": target,
                        "met": None if value is None else value >= target}
    return {"judged": True, **judged}


if __name__ == "__main__":
    main()
