"""Prometheus metrics of a worker process, served on ``RSTREAM_METRICS_PORT`` (0: off).

What the on-call engineer looks at: images scored per result, chunks per outcome, how full
the device batches are, how long a forward takes, and which model version serves.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

IMAGES = Counter("rstream_images_total", "Images scored, by result line outcome.", ["result"])
CHUNKS = Counter("rstream_chunks_total", "Chunk tasks, by outcome.", ["outcome"])
CHUNK_SECONDS = Histogram("rstream_chunk_seconds", "Wall time of one chunk task.",
                          buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
BATCH_SIZE = Histogram("rstream_batch_images", "Images per device batch.",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
FORWARD_SECONDS = Histogram("rstream_forward_seconds", "Collate + forward of one batch.",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
SERVING = Gauge("rstream_model_serving", "1 for each model version loaded in this process.",
                ["version"])


def serve(port: int) -> None:
    """Start the /metrics endpoint on ``port`` (all interfaces); nothing when ``port`` is 0."""
    if port:
        start_http_server(port)
        logger.info("metrics on http://0.0.0.0:%d/metrics", port)
