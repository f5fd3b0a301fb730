"""The dynamic batcher: one thread owns the forward pass, any number of threads submit images.

Callers submit lists of preprocessed images (or JPEGs for the device decoder) and get one future
per image. A forming thread makes device batches of at most ``max_batch`` images, waiting at
most ``max_delay_ms`` (counted from the oldest waiting image) for a batch to fill, and prepares
each (stacks it; decodes its JPEGs on the device, worker/model/batch_decode.py); the model
thread runs the forward of one batch while the next is prepared (one waits, at most). Each
submitted image keeps the predictor that was current when it was submitted, and a batch never
mixes predictors, so a :meth:`Batcher.swap` in the middle of a stream changes the model only
for what is submitted after it. A forward that raises fails the futures of its own batch and
nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from queue import Queue
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rstream.shared.errors import ImageError, RstreamError
from rstream.worker.model.batch_decode import Raw
from rstream.worker.model.predict import Predictor, Top
from rstream.worker.runtime import metrics

logger = logging.getLogger(__name__)


class Prediction(NamedTuple):
    """What a future resolves to: the top classes and the id of the model that produced them."""

    top: Top
    model_id: str


@dataclass
class _Item:
    image: Tensor | Raw  # a decoded uint8 crop, or a JPEG for the device decoder
    predictor: Predictor
    future: Future[Prediction]
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class _Prepared:
    live: list[_Item]
    predictor: Predictor
    inputs: Any  # a uint8 batch from collate(), or (normalized batch, errors) from prepare_items()
    batched_decode: bool
    start: float


class BatcherClosed(RstreamError):
    """Raised when images are submitted to a batcher that was closed."""


class Batcher:
    """Forms device batches from concurrent submissions and runs them on one thread."""

    def __init__(self, predictor: Predictor | None = None, *, max_batch: int = 64,
                 max_delay_ms: float = 10.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self.max_delay = max_delay_ms / 1000.0
        self._predictor = predictor
        # One queue per predictor, each oldest first; a batch comes from the queue whose head
        # has waited longest, so predictors never mix and each keeps submission order.
        self._queues: dict[Predictor, deque[_Item]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._stats = {"images": 0, "batches": 0, "failed_batches": 0,
                       "forward_s": 0.0, "queue_wait_s": 0.0}
        self._working: tuple[float, int, str] | None = None  # (since, images, model) in forward
        self._ready: Queue[_Prepared | None] = Queue(maxsize=1)
        self._staged = 0  # images taken into a batch whose forward has not started
        self._thread = threading.Thread(target=self._run_model, name="rstream-batcher",
                                        daemon=True)
        self._former = threading.Thread(target=self._run_former, name="rstream-batch-former",
                                        daemon=True)
        self._thread.start()
        self._former.start()

    @property
    def predictor(self) -> Predictor | None:
        """The predictor that images submitted now will use."""
        return self._predictor

    def swap(self, predictor: Predictor) -> Predictor | None:
        """Use ``predictor`` for everything submitted from now on; returns the previous one.

        Images already waiting keep the predictor they were submitted with.
        """
        with self._cond:
            previous, self._predictor = self._predictor, predictor
        return previous

    def submit(self, images: list[Tensor | Raw], predictor: Predictor | None = None,
               ) -> list[Future[Prediction]]:
        """One future per image, in order; all of them use one predictor.

        ``predictor`` defaults to the current one (see :meth:`swap`). An image whose shape does
        not fit the predictor fails its own future with ImageError at once. A :class:`Raw`
        JPEG is decoded with its batch on the predictor's device; if no decoder takes it, its
        future fails with ImageError.
        """
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed: submit before close()")
            chosen = predictor if predictor is not None else self._predictor
            if chosen is None:
                raise ValueError("no predictor: pass one or call swap() first")
            items = [_Item(image, chosen, Future()) for image in images]
            idle = not self._queues  # the model thread waits without a deadline
            queue = self._queues.setdefault(chosen, deque())
            expected = (3, chosen.preprocessing.crop, chosen.preprocessing.crop)
            for item in items:
                problem = _check_image(item.image, expected)
                if problem:
                    item.future.set_exception(ImageError(problem))
                else:
                    queue.append(item)
            if not queue:
                del self._queues[chosen]
            # Wake the model thread only when it must act sooner than its deadline (set by
            # the oldest image, which a newer one never moves): not once per image.
            if idle or len(queue) >= self.max_batch:
                self._cond.notify()
        return [item.future for item in items]

    def stats(self) -> dict[str, Any]:
        """Counters since start: images, batches, failed batches, forward seconds (collate and
        predict), queue-wait seconds summed over images, and the mean batch size."""
        with self._cond:
            stats: dict[str, Any] = dict(self._stats)
        stats["mean_batch"] = stats["images"] / stats["batches"] if stats["batches"] else 0.0
        return stats

    def liveness(self, wedge_after_s: float) -> tuple[bool, dict[str, Any]]:
        """Whether the model thread makes progress: False when it died, has spent more than
        ``wedge_after_s`` on one batch, or has left images waiting that long; with details
        for ``/healthz``."""
        now = time.monotonic()
        with self._cond:
            working = self._working
            oldest = min((queue[0].submitted for queue in self._queues.values()), default=None)
            waiting = sum(len(queue) for queue in self._queues.values()) + self._staged
            closed = self._closed
        if not self._thread.is_alive() or (not self._former.is_alive() and not closed):
            return closed, {"model_thread": "stopped" if closed else "died"}
        if working is not None:
            since, images, model = working
            busy = now - since
            detail = f"forward of {images} images on {model} for {busy:.1f} s"
            if busy > wedge_after_s:
                return False, {"model_thread": f"wedged: {detail} (limit {wedge_after_s:g} s)",
                               "waiting_images": waiting}
            return True, {"model_thread": f"working: {detail}", "waiting_images": waiting}
        if oldest is not None and now - oldest > wedge_after_s + self.max_delay:
            return False, {"model_thread": f"wedged: {waiting} images waiting for "
                           f"{now - oldest:.1f} s and none taken (limit {wedge_after_s:g} s)",
                           "waiting_images": waiting}
        return True, {"model_thread": "idle" if oldest is None else "batching",
                      "waiting_images": waiting}

    def close(self) -> None:
        """Refuse new images, finish every image already submitted, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._former.join()
        self._thread.join()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run_former(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                prepared = self._prepare(batch)
                if prepared is not None:
                    self._ready.put(prepared)
        finally:
            self._ready.put(None)  # the model thread stops after the last batch

    def _run_model(self) -> None:
        while (prepared := self._ready.get()) is not None:
            self._forward(prepared)

    def _next_batch(self) -> list[_Item] | None:
        """Wait for a full batch, the oldest image's deadline, or close; None when drained."""
        with self._cond:
            while True:
                if not self._queues:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                predictor, queue = min(self._queues.items(), key=lambda kv: kv[1][0].submitted)
                wait = queue[0].submitted + self.max_delay - time.monotonic()
                if len(queue) >= self.max_batch or wait <= 0 or self._closed:
                    batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
                    self._staged += len(batch)
                    if not queue:
                        del self._queues[predictor]
                    return batch
                self._cond.wait(wait)

    def _prepare(self, batch: list[_Item]) -> _Prepared | None:
        """The batch stacked (and its JPEGs decoded) for the forward; None when nothing is
        left of it (cancelled, or its preparation failed: its futures have the error)."""
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        self._unstage(len(batch) - len(live))
        if not live:
            return None
        predictor = live[0].predictor
        start = time.monotonic()
        images = [item.image for item in live]
        batched_decode = any(isinstance(image, Raw) for image in images)
        try:
            inputs: Any = predictor.prepare_items(images) if batched_decode \
                else predictor.collate(images)  # type: ignore[arg-type]
        except Exception as exc:
            self._unstage(len(live))
            self._fail(live, predictor, start, exc)
            return None
        return _Prepared(live, predictor, inputs, batched_decode, start)

    def _forward(self, prepared: _Prepared) -> None:
        live, predictor = prepared.live, prepared.predictor
        with self._cond:
            self._working = (time.monotonic(), len(live), predictor.model_id)
            self._staged -= len(live)
        try:
            tops: list[Top | ImageError] = predictor.predict_prepared(*prepared.inputs) \
                if prepared.batched_decode else list(predictor.predict(prepared.inputs))
        except Exception as exc:
            self._fail(live, predictor, prepared.start, exc)
            return
        self._count(live, prepared.start, failed=False)
        for item, top in zip(live, tops, strict=True):
            if isinstance(top, ImageError):
                item.future.set_exception(top)
            else:
                item.future.set_result(Prediction(top, predictor.model_id))

    def _unstage(self, images: int) -> None:
        with self._cond:
            self._staged -= images

    def _fail(self, live: list[_Item], predictor: Predictor, start: float,
              exc: Exception) -> None:
        logger.exception("forward of %d images on %r failed; their results are errors",
                         len(live), predictor)
        self._count(live, start, failed=True)
        for item in live:
            item.future.set_exception(exc)

    def _count(self, live: list[_Item], start: float, *, failed: bool) -> None:
        metrics.BATCH_SIZE.observe(len(live))
        metrics.FORWARD_SECONDS.observe(time.monotonic() - start)
        waits = [start - item.submitted for item in live]
        for wait in waits:
            metrics.QUEUE_WAIT_SECONDS.observe(wait)
        with self._cond:
            self._working = None
            self._stats["images"] += len(live)
            self._stats["batches"] += 1
            self._stats["failed_batches"] += int(failed)
            self._stats["forward_s"] += time.monotonic() - start
            self._stats["queue_wait_s"] += sum(waits)


def _check_image(image: Tensor | Raw, expected: tuple[int, int, int]) -> str:
    if isinstance(image, Raw):
        return ""
    if not isinstance(image, Tensor):
        return f"expected an image tensor, got {type(image).__name__}"
    if tuple(image.shape) != expected or image.dtype != torch.uint8:
        return (f"image tensor {image.dtype} {list(image.shape)} does not fit the model's input "
                f"uint8 {list(expected)}")
    return ""
