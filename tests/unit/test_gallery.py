"""The gallery's paging rules (producer/api/images/gallery.py): filters, orders, the next
page, the sorted window, and memory that does not grow with the job."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from rstream.producer.api.images.gallery import SORTED_WINDOW, Query, page
from rstream.shared.errors import ConfigError


def _items(n: int, fail_every: int = 5) -> Iterator[dict[str, Any]]:
    for i in range(n):
        if i % fail_every == fail_every - 1:
            yield {"image": f"0-{i}", "ok": False, "label": None, "prob": None,
                   "error": {"type": "ImageError", "message": "x"}}
        else:
            yield {"image": f"0-{i}", "ok": True, "label": "ab"[i % 2],
                   "prob": ((i * 7919) % 1000) / 1000}


def test_input_order_pages_and_counts_the_whole_job() -> None:
    first = page(_items(50), Query(limit=20))
    assert [i["image"] for i in first["items"]] == [f"0-{i}" for i in range(20)]
    assert (first["images"], first["failed"], first["matched"], first["next"]) == (50, 10, 50, 20)
    last = page(_items(50), Query(offset=40, limit=20))
    assert [i["image"] for i in last["items"]] == [f"0-{i}" for i in range(40, 50)]
    assert last["next"] is None
    labels = {entry["label"]: entry["count"] for entry in first["labels"]}
    assert labels == {"a": 20, "b": 20}


def test_sorted_pages_put_the_least_certain_first_and_failures_last() -> None:
    everything = list(_items(50))
    good = sorted((i for i in everything if i["ok"]), key=lambda i: i["prob"])
    review = page(iter(everything), Query(sort="prob", limit=10))
    assert [i["image"] for i in review["items"]] == [i["image"] for i in good[:10]]
    tail = page(iter(everything), Query(sort="prob", offset=35, limit=10))
    assert [i["image"] for i in tail["items"][:5]] == [i["image"] for i in good[35:]]
    assert [i["ok"] for i in tail["items"][5:]] == [False] * 5
    surest = page(iter(everything), Query(sort="-prob", limit=3))
    assert [i["image"] for i in surest["items"]] == [i["image"] for i in good[::-1][:3]]


def test_filters_by_label_and_by_failure() -> None:
    only_b = page(_items(50), Query(label="b", limit=100))
    assert {i["label"] for i in only_b["items"]} == {"b"} and only_b["matched"] == 20
    failed = page(_items(50), Query(failed=True, limit=100))
    assert [i["ok"] for i in failed["items"]] == [False] * 10 and failed["images"] == 50


def test_a_sorted_page_stays_inside_its_window() -> None:
    with pytest.raises(ConfigError, match="sort=order"):
        Query(sort="prob", offset=SORTED_WINDOW, limit=1)
    Query(sort="order", offset=SORTED_WINDOW * 10, limit=200)  # input order reaches all
    near = page(_items(SORTED_WINDOW + 500), Query(sort="prob", offset=SORTED_WINDOW - 150,
                                                   limit=100))
    assert near["next"] is None  # the page after it would pass the window


@pytest.mark.parametrize("sort", ["order", "prob"])
def test_paging_a_large_job_holds_a_page_not_the_job(sort: str) -> None:
    def peak(n: int) -> int:
        tracemalloc.start()
        page(_items(n), Query(sort=sort, limit=48))  # type: ignore[arg-type]
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(2_000), peak(40_000)
    assert large < small * 2, (small, large)  # 20x the images, not 20x the memory
