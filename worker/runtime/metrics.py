"""Prometheus metrics of a worker process, served on ``RSTREAM_METRICS_PORT`` (0: off) with
``/healthz`` and ``/readyz`` (see :func:`serve` and ``worker/runtime/health.py``).

What the on-call engineer looks at: images and chunks by model and outcome, with the error class of
each failure; where an image's time goes (fetch, decode, waiting for its batch, the forward pass)
and how full the batches are; model loads and reloads with their failures; which model versions are
loaded; and, on CUDA, the GPU's memory and utilization (``worker/runtime/nvml.py``). Queue depth and
the age of the oldest chunk are not here: one process for the whole system exports those (``rstream
exporter``, ``shared/queue/metrics.py``).

Label ``model`` is the model id that scored (``NAME@VERSION``, ``random:resnet18:...``), or,
when no image of a chunk reached a model, the reference the chunk asked for. Label ``reason``
is the error's class name (``ImageError``, ``NotFoundError``...), empty on success.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from prometheus_client import Counter, Histogram, Info

from rstream.shared.endpoints import EndpointServer, Route, metrics_route

logger = logging.getLogger(__name__)

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

IMAGES = Counter("rstream_images_total", "Images with a result line, by model, result (ok, "
                 "failed) and reason (the error class of a failure).",
                 ["model", "result", "reason"])
CHUNKS = Counter("rstream_chunks_total", "Chunk tasks by model, outcome (done, skipped, "
                 "refused: a late write of a part already written, retried, requeued, "
                 "stalled, dead-lettered) and reason (the error class).",
                 ["model", "outcome", "reason"])
CHUNK_SECONDS = Histogram("rstream_chunk_seconds", "Wall time of one chunk task that is done.",
                          buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
FETCH_SECONDS = Histogram("rstream_fetch_seconds", "Reading one image from storage.",
                          buckets=_SECONDS)
DECODE_SECONDS = Histogram("rstream_decode_seconds",
                           "Decoding and preprocessing one image that was read.",
                           buckets=_SECONDS)
DECODE_PATH = Counter("rstream_decode_path_total", "Images decoded, by path: cpu (whole, in a "
                      "decode thread), device (batched decode_jpeg on the model's device, "
                      "RSTREAM_DECODE_DEVICE=cuda), fallback (refused by the device decoder, "
                      "decoded on the CPU).", ["path"])
QUEUE_WAIT_SECONDS = Histogram("rstream_queue_wait_seconds",
                               "Time a decoded image waited in the batcher for its batch.",
                               buckets=_SECONDS)
BATCH_SIZE = Histogram("rstream_batch_images", "Images per device batch.",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
FORWARD_SECONDS = Histogram("rstream_forward_seconds", "Collate + forward of one batch.",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
MODEL_LOADS = Counter("rstream_model_loads_total", "Model loads by model, kind (load: first "
                      "use in this process; reload: a new production version), result (ok, "
                      "failed) and reason (the error class).",
                      ["model", "kind", "result", "reason"])
MODEL_LOAD_SECONDS = Histogram("rstream_model_load_seconds", "Time to load one model version.",
                               buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
MODEL_INFO = Info("rstream_model", "The model versions loaded in this process, with the "
                  "device, backend and precision each runs with.", ["model"])


def count_chunk(model: str, outcome: str, reason: str = "", *,
                images: Mapping[str, int] | None = None,
                failures: Mapping[str, int] | None = None) -> None:
    """Count one chunk; for a chunk that is done, ``images`` ok/failed and the ``failures``
    by error class."""
    CHUNKS.labels(model, outcome, reason).inc()
    if images is not None:
        IMAGES.labels(model, "ok", "").inc(images.get("ok", 0))
        for error, count in (failures or {}).items():
            IMAGES.labels(model, "failed", error).inc(count)


def serve(host: str, port: int, routes: Mapping[str, Route]) -> EndpointServer | None:
    """Serve ``/metrics`` and ``routes`` (the probes) on ``host:port``; None when ``port``
    is 0."""
    if not port:
        return None
    server = EndpointServer(host, port, {"/metrics": metrics_route(), **routes}).start()
    logger.info("metrics on %s/metrics, probes on %s", server.url,
                ", ".join(f"{server.url}{path}" for path in routes))
    return server
