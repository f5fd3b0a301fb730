"""Names shared by the producer and the worker: queues, tasks, Redis keys, storage layout."""

from __future__ import annotations

INFER_QUEUE = "infer"
TRAIN_QUEUE = "train"

INFER_TASK = "rstream.infer_chunk"
FINETUNE_TASK = "rstream.finetune"

REDIS_PREFIX = "rstream"
JOB_KEY = REDIS_PREFIX + ":job:{job}"
JOB_SENT_KEY = REDIS_PREFIX + ":job:{job}:sent"  # "chunk:generation" -> 1, once sent
JOB_DONE_KEY = REDIS_PREFIX + ":job:{job}:done"  # "chunk:generation" -> 1, once its part is written
JOB_COUNTS_KEY = REDIS_PREFIX + ":job:{job}:counts"  # chunk -> {"ok", "failed", "models"}
JOB_ERRORS_KEY = REDIS_PREFIX + ":job:{job}:errors"  # "chunk:generation" -> why it has no part
JOBS_INDEX_KEY = REDIS_PREFIX + ":jobs"
TRAIN_LOCK_KEY = REDIS_PREFIX + ":lock:finetune:{name}"

PART_NAME = "part-{chunk:06d}.jsonl"
MANIFEST_NAME = "manifest.json"
MODELS_PREFIX = "models"
WEIGHTS_NAME = "weights.safetensors"
META_NAME = "meta.json"
PRODUCTION_NAME = "production.json"

# A model name: a path segment in the registry and a word in references (NAME@VERSION).
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
