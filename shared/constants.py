"""Names shared by the producer and the worker: queues, tasks and Redis keys.

Storage layouts live with their owners: result parts in :mod:`rstream.shared.jobs.results`, the
manifest in :mod:`rstream.shared.jobs.manifest`, the model registry in
:mod:`rstream.shared.models.registry`.
"""

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
JOB_EVENTS_CHANNEL = REDIS_PREFIX + ":job-events:{job}"  # pub/sub: a chunk done, the job ended
DEAD_LETTERS_KEY = REDIS_PREFIX + ":dead-letters"  # newest first; messages refused with why
WORKER_KEY = REDIS_PREFIX + ":worker:{node}"  # a live worker's heartbeat (expires)
TRAIN_LOCK_KEY = REDIS_PREFIX + ":lock:finetune:{name}"
TRAIN_RUN_KEY = REDIS_PREFIX + ":train:run:{run}"  # one fine-tune run's progress and outcome

# Watch mode (producer/watch/record.py): one watcher per name, its state in these keys.
WATCHES_KEY = REDIS_PREFIX + ":watches"  # the names of every watch that has state
WATCH_KEY = REDIS_PREFIX + ":watch:{name}"  # its options, cursor and last pass (hash)
WATCH_LOCK_KEY = REDIS_PREFIX + ":watch:{name}:lock"  # held by the one watcher running it
WATCH_WINDOWS_KEY = REDIS_PREFIX + ":watch:{name}:windows"  # open window job -> its end
WATCH_PENDING_KEY = REDIS_PREFIX + ":watch:{name}:pending"  # "job:chunk" -> first seen, until done
WATCH_SEEN_KEY = REDIS_PREFIX + ":watch:{name}:seen"  # the seen-record (sorted set)
INGEST_STREAM_KEY = REDIS_PREFIX + ":ingest:{name}"  # clients: XADD rstream:ingest:NAME * uri URI
INGEST_GROUP = "rstream"  # the consumer group the watcher reads an ingest stream through

# The image formats the worker decodes (worker/model/preprocess.py) and the API's thumbnails
# read: Pillow is offered only these, so it never parses anything else.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
