"""``rstream score``: score a folder, a list file or a storage prefix in this process.

No Redis and no Celery: the same loader, preprocessing, batcher and result lines as a worker.
URIs are streamed in chunks of ``chunk_size``; a few chunks are in flight at once, so fetch and
decode of the next chunks overlap with the forward pass of the current one. Lines come out in
input order.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from tqdm import tqdm

from rstream.shared import sources
from rstream.shared.errors import ConfigError
from rstream.shared.jobs.results import Line, encode
from rstream.shared.models import refs
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.sources import chunked
from rstream.shared.storage import Storage
from rstream.worker.serving.engine import Engine


@dataclass
class Summary:
    """Counts and timing of one ``rstream score`` run; the clock starts once the model is loaded."""

    images: int = 0
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    stages: dict[str, Any] = field(default_factory=dict)  # the batcher's counters

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def add(self, lines: list[Line]) -> None:
        ok = sum(1 for line in lines if line["ok"])
        self.images += len(lines)
        self.ok += ok
        self.failed += len(lines) - ok


def score_command(args: argparse.Namespace, settings: Settings) -> int:
    """``rstream score SOURCE --model REF [--out FILE] [--topk K]``; 0 unless usage is wrong."""
    summary = run_score(args, settings)
    print(f"rstream score: {summary.images} images, {summary.ok} ok, {summary.failed} failed, "
          f"{summary.images_per_s:.1f} images/s ({summary.seconds:.2f}s)", file=sys.stderr)
    return 0


def run_score(args: argparse.Namespace, settings: Settings) -> Summary:
    """Score ``args.source`` and write the lines; ConfigError or ModelError on a usage error."""
    ref = args.model or settings.model
    refs.parse(ref)  # a missing or malformed reference fails before anything starts
    if args.topk is not None:
        if not 1 <= args.topk <= 100:
            raise ConfigError(f"--topk {args.topk} is invalid: use an integer from 1 to 100")
        settings = dataclasses.replace(settings, topk=args.topk)
    storage, uris = open_source(args.source, settings)
    first = next(uris, None)
    if first is None:
        raise ConfigError(f"{args.source}: nothing to score there: check the path or prefix")
    registry = Registry(Storage(settings), settings.models)
    with Engine(settings, storage, registry) as engine:
        ref = engine.resolve_ref(ref)  # one version for the whole run, even if production moves
        engine.predictor_for(ref)
        with _output(args.out) as out:
            summary = score_stream(engine, itertools.chain([first], uris), ref, out, settings)
        summary.stages = engine.batcher.stats()
    return summary


def open_source(source: str, settings: Settings) -> tuple[Storage, Iterator[str]]:
    """The storage to read from and the URIs of ``source``, lazily.

    A local folder anywhere on disk is scored recursively, with absolute paths as URIs (this
    process reads it directly); anything else is what ``rstream submit`` takes: a list file,
    ``s3://bucket/prefix`` or a folder under ``RSTREAM_STORAGE_ROOT``.
    """
    if os.path.isdir(source):
        folder = os.path.realpath(source)
        # Only read from here: the output locations are neutral ones inside the folder.
        storage = Storage(dataclasses.replace(settings, storage_root=folder, results="results",
                                              models="models", train_data="train"))
        return storage, storage.list(folder.rstrip("/") + "/")
    storage = Storage(settings)
    return storage, sources.resolve(source, storage).uris(storage)


def score_stream(engine: Engine, uris: Iterable[str], ref: str, out: IO[bytes],
                 settings: Settings) -> Summary:
    """Score ``uris`` chunk by chunk, a few chunks in flight, writing lines in input order."""
    summary = Summary()
    workers = max(2, settings.concurrency)
    start = time.monotonic()
    with tqdm(unit="img", file=sys.stderr, disable=None, desc="scoring") as bar, \
            ThreadPoolExecutor(workers, thread_name_prefix="rstream-score") as pool:
        pending: deque[Future[list[Line]]] = deque()
        for chunk in chunked(uris, settings.chunk_size):
            pending.append(pool.submit(engine.score, chunk, ref))
            if len(pending) >= 2 * workers:
                _write(pending.popleft().result(), out, summary, bar)
        while pending:
            _write(pending.popleft().result(), out, summary, bar)
    summary.seconds = time.monotonic() - start
    return summary


def _write(lines: list[Line], out: IO[bytes], summary: Summary, bar: tqdm) -> None:
    out.write(encode(lines))
    out.flush()
    summary.add(lines)
    bar.update(len(lines))


@contextmanager
def _output(path: str | None) -> Iterator[IO[bytes]]:
    """Standard output, or a file that appears complete or not at all."""
    if path is None:
        yield sys.stdout.buffer
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(f"--out {path}: the folder {directory} does not exist: create it first")
    fd, tmp = tempfile.mkstemp(prefix=".rstream-score-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
