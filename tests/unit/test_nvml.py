"""GPU metrics through NVML: exported on a CUDA device, never a failure without one."""

from __future__ import annotations

import sys

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest

from rstream.worker.runtime import nvml


def test_nothing_is_exported_for_the_cpu() -> None:
    registry = CollectorRegistry()
    assert nvml.watch(torch.device("cpu"), registry) is None
    assert b"rstream_gpu" not in generate_latest(registry)


def test_without_nvidia_ml_py_the_worker_serves_on_without_gpu_metrics(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    registry = CollectorRegistry()
    assert nvml.watch(torch.device("cuda"), registry) is None
    assert b"rstream_gpu" not in generate_latest(registry)


def test_without_a_driver_nothing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a driver")
    pytest.importorskip("pynvml")
    registry = CollectorRegistry()
    assert nvml.watch(torch.device("cuda"), registry) is None
    assert b"rstream_gpu" not in generate_latest(registry)


@pytest.mark.gpu
def test_on_cuda_the_gpus_memory_and_utilization_are_exported() -> None:
    pytest.importorskip("pynvml")
    device = torch.device("cuda")
    held = torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device=device)  # 64 MiB
    registry = CollectorRegistry()
    assert nvml.watch(device, registry) is not None
    samples = {s.name: s for family in registry.collect() for s in family.samples}
    used = samples["rstream_gpu_memory_used_bytes"]
    total = samples["rstream_gpu_memory_total_bytes"]
    assert 0 < used.value <= total.value
    assert used.labels["gpu"].isdigit()
    assert 0.0 <= samples["rstream_gpu_utilization_ratio"].value <= 1.0
    assert samples["rstream_gpu_process_memory_reserved_bytes"].value >= held.numel()
