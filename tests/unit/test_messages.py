"""Chunk task ids: made from (job, chunk, generation) and read back whole, or not at all."""

from __future__ import annotations

import pytest

from rstream.shared.queue.messages import ChunkMessage


def test_a_task_id_reads_back_as_its_job_chunk_and_generation() -> None:
    message = ChunkMessage("photos-2026.11_a", 12, ["a.jpg"], "random:resnet18", "results", 3)
    assert ChunkMessage.parse_task_id(message.task_id) == ("photos-2026.11_a", 12, 3)


@pytest.mark.parametrize("task_id", [
    "photos:1", "photos:1:0:2", ":1:0", "photos:-1:0", "photos:1:0\n", "-bad:1:0",
    "a b:1:0", "photos:x:0", "d7f4c1c2-5e9a-4c4b-8a8e-0e6f2c1f9b10", "", None, 12,
])
def test_anything_else_is_not_a_chunk(task_id: object) -> None:
    assert ChunkMessage.parse_task_id(task_id) is None
