"""Names shared by the producer and the worker: queues, tasks, Redis keys, storage layout."""

from __future__ import annotations

INFER_QUEUE = "infer"
TRAIN_QUEUE = "train"

INFER_TASK = "rstream.infer_chunk"
FINETUNE_TASK = "rstream.finetune"

REDIS_PREFIX = "rstream"
JOB_KEY = REDIS_PREFIX + ":job:{job}"
JOB_CHUNKS_DONE_KEY = REDIS_PREFIX + ":job:{job}:done"
JOB_MODELS_KEY = REDIS_PREFIX + ":job:{job}:models"
JOBS_INDEX_KEY = REDIS_PREFIX + ":jobs"
TRAIN_LOCK_KEY = REDIS_PREFIX + ":lock:finetune:{name}"

PART_NAME = "part-{chunk:06d}.jsonl"
MANIFEST_NAME = "manifest.json"
MODELS_PREFIX = "models"
WEIGHTS_NAME = "weights.safetensors"
META_NAME = "meta.json"
PRODUCTION_NAME = "production.json"
