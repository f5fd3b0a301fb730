"""The baseline for bench/e2e.py: one Celery task per image, the design most tutorials show.

    celery -A bench.naive_app worker -Q naive --pool threads -c N

Each task fetches one object, decodes it with PIL and torchvision's transforms (``Resize``,
``CenterCrop``), predicts at batch size 1, writes one result object, and counts itself done in Redis
(``naive:{job}:done``), which the benchmark polls. It shares with rstream everything that is not the
design under test: the settings (``RSTREAM_*``), the Celery delivery configuration
(``rstream.shared.queue.app.make_app``: late acks, prefetch of one), the storage client, the model
(``rstream.worker.model.loader.load_model``, loaded once per process) and the forward
(``Predictor``: inference mode, channels_last, normalization in the model's process).
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import redis
from PIL import Image

from rstream.shared.queue.app import make_app
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage, join

QUEUE = "naive"
TASK = "bench.naive.classify"

settings = Settings.from_env()
app = make_app(settings, name="naive")
_lock = threading.Lock()
_loaded: dict[str, Any] = {}


def done_key(job: str) -> str:
    return f"naive:{job}:done"


def _resources(model: str) -> dict[str, Any]:
    """Model, transform, storage and Redis of this process, built on first use."""
    with _lock:
        if model not in _loaded:
            from torchvision import transforms as T

            from rstream.worker.model.device import resolve_device
            from rstream.worker.model.loader import load_model
            from rstream.worker.model.predict import Predictor

            predictor = Predictor(load_model(model), resolve_device(settings.device),
                                  settings.precision, settings.topk)
            spec = predictor.preprocessing
            _loaded[model] = {
                "predictor": predictor,
                "transform": T.Compose([T.Resize(spec.resize), T.CenterCrop(spec.crop),
                                        T.PILToTensor()]),
                "storage": Storage(settings),
                "redis": redis.Redis.from_url(settings.redis_url),
            }
        return _loaded[model]


@app.task(name=TASK)
def classify(uri: str, job: str, model: str, results: str) -> None:
    """Fetch, decode, predict (batch of 1), write one result object, count it done."""
    res = _resources(model)
    data = res["storage"].read(uri)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    top = res["predictor"].predict(res["transform"](image).unsqueeze(0))[0]
    line = {"uri": uri, "ok": True, "top": top, "model": res["predictor"].model_id}
    res["storage"].write(join(results, job, uri.rsplit("/", 1)[1] + ".json"),
                         json.dumps(line).encode())
    res["redis"].incr(done_key(job))
