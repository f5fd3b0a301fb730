"""A job's results as a gallery: each image of the job's input record with its result line,
filtered by top-1 label, sorted by probability, a page at a time.

An image is named by its place in the input record, ``{chunk}-{index}``, never by its URI:
the thumbnail route takes that name back and reads the URI from the record itself.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from rstream.shared.errors import ConfigError, NotFoundError
from rstream.shared.jobs.inputs import InputRecord
from rstream.shared.jobs.results import part_uri, read_part
from rstream.shared.jobs.store import Job
from rstream.shared.storage import Storage

IMAGE_ID = re.compile(r"(\d{1,9})-(\d{1,6})")
Sort = Literal["order", "prob", "-prob"]


def image_id(chunk: int, index: int) -> str:
    return f"{chunk}-{index}"


def parse_image_id(text: str) -> tuple[int, int]:
    """``{chunk}-{index}`` -> (chunk, index); NotFoundError for anything else."""
    found = IMAGE_ID.fullmatch(text)
    if not found:
        raise NotFoundError(f"image {text!r} is not an image of this job: use the ids the "
                            "gallery lists ({chunk}-{index})")
    return int(found[1]), int(found[2])


def input_uri(storage: Storage, job: Job, chunk: int, index: int) -> str:
    """The URI of image ``index`` of ``chunk`` in the job's own input record."""
    if chunk >= job.listed_chunks:
        raise NotFoundError(f"job {job.id} has no chunk {chunk}")
    uris = InputRecord(storage, job.results, job.id).chunk(chunk)
    if index >= len(uris):
        raise NotFoundError(f"chunk {chunk} of job {job.id} has no image {index}")
    return uris[index]


def items(storage: Storage, job: Job) -> Iterator[dict[str, Any]]:
    """Every image whose chunk has a part, in input order, with its result line."""
    record = InputRecord(storage, job.results, job.id)
    for segment in record.segments_below(job.listed_chunks):
        for chunk, uris in segment:
            try:
                lines = {line["uri"]: line for line in
                         read_part(storage, part_uri(job.results, job.id, chunk))}
            except NotFoundError:
                continue  # not scored yet
            for index, uri in enumerate(uris):
                line = lines.get(uri)
                if line is not None:
                    yield _item(image_id(chunk, index), line)


def _item(image: str, line: dict[str, Any]) -> dict[str, Any]:
    """A tile: the image's name, its top-1 (or its error), and the manifest's kept columns."""
    name = str(line["uri"]).rstrip("/").rsplit("/", 1)[-1]
    shown = {"image": image, "uri": line["uri"], "name": name,
             "columns": line.get("columns") or {}}
    if line["ok"]:
        top = line["top"]
        return {**shown, "ok": True, "label": str(top[0]["label"]),
                "prob": float(top[0]["prob"]), "top": top, "model": line.get("model")}
    return {**shown, "ok": False, "label": None, "prob": None, "error": line["error"]}


SORTED_WINDOW = 10_000  # the deepest a sorted page reaches: memory stays O(window), not O(job)


@dataclass(frozen=True)
class Query:
    """What the gallery shows: a top-1 label (None: all), failed images only, the order
    (``prob``: least certain first, the review queue), and the page."""

    label: str | None = None
    failed: bool = False
    sort: Sort = "order"
    offset: int = 0
    limit: int = 48

    def __post_init__(self) -> None:
        if self.sort != "order" and self.offset + self.limit > SORTED_WINDOW:
            raise ConfigError(
                f"offset+limit={self.offset + self.limit}: a page sorted by probability reaches "
                f"the first {SORTED_WINDOW:,} images of the order; filter by label, or page "
                "in input order (sort=order), which reaches every image")

    def wants(self, item: dict[str, Any]) -> bool:
        if self.failed and item["ok"]:
            return False
        return self.label is None or item["label"] == self.label


def page(found: Iterator[dict[str, Any]], query: Query) -> dict[str, Any]:
    """One page of the gallery and the label counts of the whole job (for the filter).

    One pass over the job that keeps at most one page (input order) or the first
    ``offset + limit`` of the order (sorted, at most SORTED_WINDOW): a job of millions of
    images is paged without holding its items."""
    labels: Counter[str] = Counter()
    counts = {"images": 0, "failed": 0, "matched": 0}

    def matching() -> Iterator[dict[str, Any]]:
        for item in found:
            counts["images"] += 1
            if item["ok"]:
                labels[item["label"]] += 1
            else:
                counts["failed"] += 1
            if query.wants(item):
                counts["matched"] += 1
                yield item

    end = query.offset + query.limit
    if query.sort == "order":
        shown = [item for n, item in enumerate(matching()) if query.offset <= n < end]
    else:
        # Failed images have no probability: they go last in either order. nsmallest is
        # stable, like sorted(), so equal probabilities keep their input order.
        sign = 1 if query.sort == "prob" else -1
        shown = heapq.nsmallest(end, matching(), key=lambda i: (
            not i["ok"], sign * i["prob"] if i["ok"] else 0.0))[query.offset:]
    return {**counts, "labels": [{"label": k, "count": n} for k, n in labels.most_common()],
            "offset": query.offset, "next": _next(query, counts["matched"]), "items": shown}


def _next(query: Query, matched: int) -> int | None:
    """The next page's offset; None at the end, and where a sorted page would pass the window."""
    end = query.offset + query.limit
    if end >= matched or (query.sort != "order" and end + query.limit > SORTED_WINDOW):
        return None
    return end
