"""The inference engine of one serving process: fetch, decode, batch, predict, result lines.

An :class:`Engine` owns one :class:`~rstream.worker.serving.batcher.Batcher` (the only thread that
runs the model), a pool of ``decode_threads`` threads that fetch and decode images, and a small
cache of :class:`~rstream.worker.model.predict.Predictor` objects keyed by resolved model version.
Several threads may call :meth:`Engine.score` at once: while one call's images are on the device,
the others fetch and decode theirs. Build it inside the serving process (it resolves the device,
which may start CUDA), never in a parent that forks afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from torch import Tensor

from rstream.shared.errors import InvalidURI, RstreamError, TransientError
from rstream.shared.jobs.results import Line, error_line, ok_line
from rstream.shared.models import refs
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.shared.uris import uri_problem
from rstream.worker.model.batch_decode import Raw, admit, decodes_in_batches
from rstream.worker.model.device import resolve_device
from rstream.worker.model.loader import load_model
from rstream.worker.model.onnx import OnnxPredictor, make_predictor
from rstream.worker.model.predict import Predictor
from rstream.worker.model.preprocess import Preprocessing, decode_image
from rstream.worker.runtime import metrics, nvml
from rstream.worker.serving.batcher import Batcher, Prediction
from rstream.worker.serving.reload import ProductionTracker

logger = logging.getLogger(__name__)

CACHED_PREDICTORS = 3  # model versions kept loaded; an evicted one lives on while it has work


class Engine:
    """Scores lists of image URIs with a model reference; thread-safe."""

    def __init__(self, settings: Settings, storage: Storage, registry: Registry) -> None:
        self.settings = settings
        self.storage = storage
        self.registry = registry
        self.device = resolve_device(settings.device)
        self.batched_decode = decodes_in_batches(settings.decode_device, self.device)
        self.batcher = Batcher(max_batch=settings.max_batch, max_delay_ms=settings.max_delay_ms)
        self._pool = ThreadPoolExecutor(settings.decode_threads,
                                        thread_name_prefix="rstream-decode")
        self._lock = threading.Lock()
        self._predictors: OrderedDict[str, Predictor] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._production = ProductionTracker(
            registry, settings.reload_interval,
            lambda ref: self.predictor_for(ref, kind="reload"))
        nvml.watch(self.device)
        logger.info("engine on %s, precision %s, batches of up to %d images, JPEGs decoded %s",
                    self.device, settings.precision, settings.max_batch,
                    f"in batches on {self.device}" if self.batched_decode else "on the CPU")

    def score(self, uris: list[str], model_ref: str) -> list[Line]:
        """One result line per URI, in order, all from one model version.

        A URI that cannot be fetched for good (missing, refused, too large) or decoded gets an
        error line; a failed forward gives error lines to the images of its batch. A model
        that cannot be resolved or loaded raises (ModelError, NotFoundError), since no line
        could name a version. A fetch that fails after botocore's own retries raises its
        TransientError: the chunk is retried as a whole, by its task (one retry layer each).
        """
        predictor = self.predictor_for(model_ref)
        spec = predictor.preprocessing

        def decode_then_submit(uri: str) -> Future[Prediction] | Exception:
            # Each image goes to the batcher as soon as it is decoded, so the forward of the
            # first images overlaps the decode of the rest (and of other chunks).
            item = self._fetch_decode(uri, spec)
            return item if isinstance(item, Exception) else self.batcher.submit(
                [item], predictor)[0]

        queued = list(self._pool.map(decode_then_submit, uris))
        transient = next((item for item in queued if isinstance(item, TransientError)), None)
        if transient is not None:
            raise transient
        return [error_line(uri, item) if isinstance(item, Exception)
                else _line(uri, item, predictor.model_id)
                for uri, item in zip(uris, queued, strict=True)]

    def predictor_for(self, ref: str, *, kind: str = "load") -> Predictor:
        """The predictor for ``ref``, loaded once per resolved version and cached; ``kind``
        says, for the metrics, whether a load is a first use or a reload (a new production
        version)."""
        try:
            key = self.resolve_ref(ref)
        except Exception as exc:  # no production version, storage down: a load that failed
            metrics.MODEL_LOADS.labels(ref, kind, "failed", type(exc).__name__).inc()
            raise
        with self._lock:
            if key in self._predictors:
                self._predictors.move_to_end(key)
                return self._predictors[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one thread loads a version; the others wait for it, then share it
            with self._lock:
                predictor = self._predictors.get(key)
            if predictor is None:
                predictor = self._load(key, kind)
            with self._lock:
                self._predictors[key] = predictor
                self._loading.pop(key, None)
                metrics.MODEL_INFO.labels(predictor.model_id).info({
                    "device": str(self.device),
                    "backend": "onnx" if isinstance(predictor, OnnxPredictor) else "eager",
                    "precision": predictor.precision})
                while len(self._predictors) > CACHED_PREDICTORS:
                    _, evicted = self._predictors.popitem(last=False)
                    with contextlib.suppress(KeyError):  # two refs may name one version
                        metrics.MODEL_INFO.remove(evicted.model_id)
        return predictor

    def resolve_ref(self, ref: str) -> str:
        """``ref`` with a registry ``NAME`` pinned to the version to serve now.

        A name follows its production pointer, read at most every ``reload_interval`` seconds;
        a new version loads in the background and serves once loaded (see worker/serving/reload.py).
        Other references come back in their canonical form (``str(refs.parse(ref))``).
        """
        parsed = refs.parse(ref)
        if not parsed.follows_production:
            return str(parsed)
        return f"{parsed.name}@{self._production.version(parsed.name)}"

    def close(self) -> None:
        """Finish the work already submitted, then stop the threads."""
        self._production.close()
        self._pool.shutdown(wait=True)
        self.batcher.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self, ref: str, kind: str) -> Predictor:
        start = time.monotonic()
        try:
            loaded = load_model(ref, self.registry)
            predictor = make_predictor(self.settings.backend, loaded, self.device,
                                       self.settings.precision, self.settings.topk,
                                       registry=self.registry, settings=self.settings)
        except Exception as exc:
            metrics.MODEL_LOADS.labels(ref, kind, "failed", type(exc).__name__).inc()
            raise
        seconds = time.monotonic() - start
        metrics.MODEL_LOADS.labels(ref, kind, "ok", "").inc()
        metrics.MODEL_LOAD_SECONDS.observe(seconds)
        logger.info("loaded %s on %s in %.2fs", predictor.model_id, self.device, seconds)
        return predictor

    def _fetch_decode(self, uri: str, spec: Preprocessing) -> Tensor | Raw | Exception:
        problem = uri_problem(uri)
        if problem:
            return InvalidURI(f"{uri[:200]!r} cannot name an object: {problem}")
        try:
            start = time.monotonic()
            data = self.storage.read(uri, self.settings.max_object_bytes)
            read = time.monotonic()
            metrics.FETCH_SECONDS.observe(read - start)
            # Batched: a JPEG's header here, its pixels with its batch, on the device.
            image = admit(data, spec, self.settings.max_image_pixels) if self.batched_decode \
                else decode_image(data, spec, self.settings.max_image_pixels)
            metrics.DECODE_SECONDS.observe(time.monotonic() - read)
            if not isinstance(image, Raw):
                metrics.DECODE_PATH.labels("cpu").inc()
            return image
        except RstreamError as exc:
            return exc
        except Exception as exc:  # a bug or a library surprise fails one image, not the call
            logger.exception("unexpected error fetching or decoding %r", uri)
            return exc


def _line(uri: str, future: Future[Prediction], model_id: str) -> Line:
    try:
        top, produced_by = future.result()
    except Exception as exc:  # the forward of this image's batch failed: the model ran
        return error_line(uri, exc, model_id)
    return ok_line(uri, top, produced_by)
