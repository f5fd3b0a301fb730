"""Logging: text by default, one JSON object per line with RSTREAM_LOG_FORMAT=json."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from rstream.shared import logs


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The stream rstream's handler writes to, with the root logger restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(logs, "_context", {})
    yield io.StringIO()
    root.handlers, root.level = handlers, level


def test_json_gives_one_object_per_line_with_the_chunk_fields(stderr: io.StringIO) -> None:
    logs.configure("info", "json", force=True, stream=stderr)
    logs.set_context(worker="rstream-infer-cpu@host")
    logger = logging.getLogger("rstream.worker.tasks")
    logger.info("job %s chunk %d: %s", "photos", 3, {"ok": 2},
                extra=logs.chunk_fields("photos", 3, "digits@v1", generation=0))
    logger.debug("not at info")
    try:
        raise ValueError("multi\nline")
    except ValueError:
        logger.exception("it broke")
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 2, "one line per record, a traceback included"
    first, second = map(json.loads, lines)
    assert first["message"] == "job photos chunk 3: {'ok': 2}"
    assert (first["level"], first["logger"]) == ("INFO", "rstream.worker.tasks")
    assert (first["job"], first["chunk"], first["model"], first["generation"]) == (
        "photos", 3, "digits@v1", 0)
    assert first["worker"] == "rstream-infer-cpu@host"
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: multi\nline" in second["exception"]


def test_text_stays_the_default_and_leaves_the_fields_out(stderr: io.StringIO) -> None:
    logs.configure("info", force=True, stream=stderr)
    logging.getLogger("rstream.worker.tasks").warning(
        "job %s chunk %d", "photos", 3, extra=logs.chunk_fields("photos", 3, "digits@v1"))
    [line] = stderr.getvalue().splitlines()
    assert line.endswith(" WARNING rstream.worker.tasks: job photos chunk 3")
    assert "digits@v1" not in line


def test_configuring_again_replaces_rstreams_handler(stderr: io.StringIO) -> None:
    logs.configure("info", "text", force=True, stream=stderr)
    logs.configure("info", "json", force=True, stream=stderr)
    logging.getLogger("x").info("once")
    assert [json.loads(line)["message"] for line in stderr.getvalue().splitlines()] == ["once"]


def test_another_handler_on_the_root_logger_is_left_alone_unless_forced(
        stderr: io.StringIO) -> None:
    root = logging.getLogger()
    other = logging.StreamHandler(io.StringIO())
    root.handlers = [other]
    logs.configure("info", "json")
    assert root.handlers == [other]
    logs.configure("info", "json", force=True)
    assert other not in root.handlers and len(root.handlers) == 1
