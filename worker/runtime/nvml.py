"""GPU memory and utilization of this worker's GPU, for ``/metrics``, read through NVML.

Optional on purpose: without the ``pynvml`` module (the ``nvidia-ml-py`` package), without an
NVIDIA driver, or on the CPU, :func:`watch` logs why and exports nothing; a read that fails at
scrape time leaves these metrics out of that scrape. NVML numbers GPUs as the driver does,
ignoring ``CUDA_VISIBLE_DEVICES``, so the worker's GPU is found by the UUID torch reports.

- ``rstream_gpu_memory_used_bytes{gpu}`` / ``rstream_gpu_memory_total_bytes{gpu}``: the whole
  GPU, every process on it;
- ``rstream_gpu_utilization_ratio{gpu}``: the share of the last sample period in which a kernel
  ran (NVML's utilization, 0 to 1);
- ``rstream_gpu_process_memory_reserved_bytes{gpu}``: what this process's torch holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# One collector per GPU and registry in a process, however many engines it builds.
_watching: dict[tuple[str, int], GpuCollector] = {}


class GpuCollector(Collector):
    """Reads one GPU through NVML at each scrape."""

    def __init__(self, nvml: ModuleType, handle: Any, device: torch.device) -> None:
        self.nvml, self.handle, self.device = nvml, handle, device
        self.gpu = str(nvml.nvmlDeviceGetIndex(handle))
        self._failing = False

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        try:
            memory = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
            utilization = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
        except self.nvml.NVMLError as exc:
            if not self._failing:
                logger.warning("cannot read GPU %s through NVML (%s); its metrics are left "
                               "out until it answers", self.gpu, exc)
            self._failing = True
            return
        self._failing = False
        yield _gauge("rstream_gpu_memory_used_bytes", "GPU memory in use (every process).",
                     self.gpu, memory.used)
        yield _gauge("rstream_gpu_memory_total_bytes", "GPU memory in all.", self.gpu,
                     memory.total)
        yield _gauge("rstream_gpu_utilization_ratio", "Share of time a kernel ran on the GPU "
                     "(NVML's last sample period).", self.gpu, utilization.gpu / 100.0)
        yield _gauge("rstream_gpu_process_memory_reserved_bytes", "GPU memory this process's "
                     "torch holds.", self.gpu, torch.cuda.memory_reserved(self.device))


def _gauge(name: str, doc: str, gpu: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["gpu"])
    family.add_metric([gpu], value)
    return family


def watch(device: torch.device, registry: CollectorRegistry = REGISTRY) -> GpuCollector | None:
    """Export the metrics of ``device``'s GPU; None (and a log line) when that cannot be."""
    if device.type != "cuda":
        return None
    try:
        import pynvml
    except ImportError:
        logger.info("no GPU metrics: nvidia-ml-py is not installed (pip install nvidia-ml-py)")
        return None
    try:
        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        key = (uuid, id(registry))
        if key not in _watching:
            collector = GpuCollector(pynvml, pynvml.nvmlDeviceGetHandleByUUID(uuid), device)
            registry.register(collector)
            _watching[key] = collector
    except (pynvml.NVMLError, RuntimeError, AttributeError) as exc:
        logger.info("no GPU metrics: NVML cannot read %s (%s: %s)", device, type(exc).__name__,
                    exc)
        return None
    return _watching[key]
