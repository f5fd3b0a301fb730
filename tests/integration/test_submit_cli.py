"""The submission side as a user meets it: the real console script (``python -m
rstream.producer.cli``) against a real Redis and moto's S3 over HTTP; what is checked is what a user
sees, the messages and the exit codes. One test (or a few) per point of the submit-side issue.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rstream.producer.cli import build_parser
from rstream.shared.constants import INFER_QUEUE, TRAIN_QUEUE
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.shared.training.config import PRESETS
from tests.services import (
    REPO,
    RedisServer,
    ServiceUnavailable,
    WorkerProcess,
    free_port,
    service_unavailable,
)
from tests.settings import make_settings

MODEL = "random:resnet18:classes=3"


class Cli:
    """Runs ``rstream`` as a user would, with the test's settings in the environment."""

    def __init__(self, settings: Settings, cwd: Path) -> None:
        self.settings, self.cwd = settings, cwd
        self.extra: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RSTREAM_")}
        env.update(self.settings.as_env())
        env.update(self.extra)
        return env

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rstream.producer.cli", *args], cwd=self.cwd,
                              env=self.env(), capture_output=True, text=True, timeout=timeout,
                              check=False)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "rstream.producer.cli", *args], cwd=self.cwd,
                                env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url)


def one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rstream: error:")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], errors[0]


@pytest.fixture
def cli(redis_server: str, tmp_path: Path, s3_bucket: str, moto_server: str) -> Cli:
    url = redis_server.rsplit("/", 1)[0] + "/13"  # no worker consumes this database
    redis.Redis.from_url(url).flushdb()
    root = tmp_path / "root"
    root.mkdir()
    settings = make_settings(redis_url=url, storage_root=str(root), chunk_size=4,
                             max_pending_chunks=0, s3_endpoint_url=moto_server,
                             allowed_buckets=(s3_bucket, "missing-bucket"), s3_max_attempts=2)
    return Cli(settings, tmp_path)


def write_images(cli: Cli, folder: str, names: list[str]) -> None:
    for name in names:
        (Path(cli.settings.storage_root) / folder / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(cli.settings.storage_root) / folder / name).write_bytes(b"not decoded here")


def queued_chunks(cli: Cli) -> list[dict[str, Any]]:
    """The chunk messages in the infer queue, oldest first."""
    found = []
    for raw in reversed(cli.redis().lrange(INFER_QUEUE, 0, -1)):
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        found.append(body[1]["message"])
    return found


# --- 1. resubmission works from the input record ---------------------------------------


def test_resubmitting_over_a_grown_folder_sends_the_recorded_chunks_only(cli: Cli) -> None:
    write_images(cli, "photos", [f"img-{i}.jpg" for i in range(8)])
    first = cli.run("submit", "photos", "--job", "grown", "--model", MODEL)
    assert first.returncode == 0, first.stderr
    write_images(cli, "photos", [f"a-{i}.jpg" for i in range(3)])  # they sort first
    again = cli.run("submit", "photos", "--job", "grown", "--model", MODEL)
    assert again.returncode == 0, again.stderr
    assert "files added to photos/ since are not part of it" in again.stderr
    messages = queued_chunks(cli)
    by_chunk: dict[int, list[list[str]]] = {}
    for message in messages:
        by_chunk.setdefault(message["chunk"], []).append(message["uris"])
    assert sorted(by_chunk) == [0, 1]
    originals = [f"photos/img-{i}.jpg" for i in range(8)]
    assert by_chunk[0] == [originals[:4]] * 2 and by_chunk[1] == [originals[4:]] * 2
    status = cli.run("status", "grown")
    assert "0/8 images" in status.stdout, status.stdout


def test_a_resubmission_with_other_arguments_is_refused(cli: Cli) -> None:
    write_images(cli, "photos", ["a.jpg"])
    assert cli.run("submit", "photos", "--job", "args", "--model", MODEL).returncode == 0
    result = cli.run("submit", "photos", "--job", "args", "--model", MODEL,
                     "--chunk-size", "2")
    one_line_error(result, "job args already exists with another source, model, output, "
                           "chunk size or table columns")
    other_format = cli.run("submit", "photos", "--job", "args", "--model", MODEL,
                           "--results-format", "parquet")
    one_line_error(other_format, "job args already exists with another source")


# --- 2. missing, empty and wrong sources -----------------------------------------------


@pytest.mark.parametrize(("source", "expected"), [
    ("myphotos", "myphotos: no such folder under the storage root"),
    ("photo", "did you mean photos/"),
    ("emptydir", "emptydir/: no images there"),
    ("../outside", "outside the storage root"),
    ("photos/a.jpg", "is a file, not a folder or a list file"),
    ("s3://{bucket}/nope/", "s3://{bucket}/nope/: no images there"),
    ("s3://missing-bucket/x/", "NoSuchBucket"),
    ("s3://other-bucket/x/", "is not in RSTREAM_ALLOWED_BUCKETS"),
    ("bad-json.jsonl", "bad-json.jsonl:3: a JSON line needs a \"uri\" field"),
    ("latin1.txt", "not UTF-8 text"),
    ("absent.txt", "absent.txt: no such list file"),
])
def test_a_source_that_cannot_be_scored_is_refused_and_leaves_no_job(
        cli: Cli, s3_bucket: str, source: str, expected: str) -> None:
    write_images(cli, "photos", ["a.jpg"])
    (Path(cli.settings.storage_root) / "emptydir").mkdir()
    (cli.cwd / "bad-json.jsonl").write_text('{"uri": "photos/a.jpg"}\nphotos/a.jpg\n{"url": 1}\n')
    (cli.cwd / "latin1.txt").write_bytes("photos/caf\xe9.jpg\n".encode("latin-1"))
    source = source.format(bucket=s3_bucket)
    result = cli.run("submit", source, "--job", "refused", "--model", MODEL, "--chunk-size", "1")
    one_line_error(result, expected.format(bucket=s3_bucket))
    assert cli.run("status", "refused").returncode == 2, "no job record was left"
    assert cli.run("jobs").stdout == ""


# --- 3. model references are checked at submit -----------------------------------------


@pytest.mark.parametrize(("model", "expected"), [
    ("random:resnet19", "architecture 'resnet19' is not one of resnet18, resnet50"),
    ("random:resnet18:classes=0", "classes must be at least 1"),
    ("resnet50", "use torchvision:resnet50:IMAGENET1K_V2"),
    ("torchvision:resnet18:IMAGENET", "no weights 'IMAGENET' for resnet18"),
    ("nosuchmodel", "model 'nosuchmodel' has no production version"),
])
def test_a_model_reference_is_checked_at_submit(cli: Cli, model: str, expected: str) -> None:
    write_images(cli, "photos", ["a.jpg"])
    one_line_error(cli.run("submit", "photos", "--model", model), expected)
    assert cli.run("jobs").stdout == ""


# --- 4. Redis unreachable, or a wrong password -----------------------------------------


@pytest.mark.parametrize("command", [["submit", "photos", "--model", MODEL], ["status", "x"],
                                     ["jobs"], ["wait", "x"], ["train"], ["results", "x"]])
def test_an_unreachable_redis_is_one_line_within_seconds(cli: Cli, command: list[str]) -> None:
    write_images(cli, "photos", ["a.jpg"])
    cli.extra["RSTREAM_REDIS_URL"] = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    result = cli.run(*command, timeout=30)
    assert time.monotonic() - started < 8, "within seconds, not after 30 s of retries"
    one_line_error(result, "RSTREAM_REDIS_URL=redis://****@127.0.0.1:", "is not reachable",
                   "start Redis")
    assert "s3cret" not in result.stderr + result.stdout


def test_a_wrong_redis_password_is_one_line(cli: Cli, tmp_path: Path) -> None:
    try:
        server = RedisServer(tmp_path / "auth", password="right-password")
    except ServiceUnavailable as exc:
        service_unavailable(str(exc))
    (tmp_path / "auth").mkdir()
    with server:
        cli.extra["RSTREAM_REDIS_URL"] = f"redis://:wrong-password@127.0.0.1:{server.port}/0"
        result = cli.run("jobs", timeout=30)
    one_line_error(result, "refused the password", "redis://****@")
    assert "wrong-password" not in result.stderr


# --- 5. progress from the first second; Ctrl-C ----------------------------------------


def test_the_job_id_comes_first_and_ctrl_c_leaves_a_record_that_status_explains(
        cli: Cli) -> None:
    write_images(cli, "photos", [f"img-{i:03d}.jpg" for i in range(40)])
    cli.extra["RSTREAM_MAX_PENDING_CHUNKS"] = "2"  # no worker: submit blocks after 2 chunks
    process = cli.start("submit", "photos", "--job", "ctrl-c", "--model", MODEL)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ctrl-c", "printed before the job is sent"
    deadline = time.monotonic() + 30
    while len(queued_chunks(cli)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "interrupted: job ctrl-c keeps its" in err and "rstream resume ctrl-c" in err
    status = cli.run("status", "ctrl-c")
    assert "submission stopped after" in status.stdout and "interrupted (Ctrl-C)" in status.stdout
    assert "ETA -" in status.stdout, "no estimate from a partial total"
    cli.extra["RSTREAM_MAX_PENDING_CHUNKS"] = "0"
    resumed = cli.run("resume", "ctrl-c")
    assert resumed.returncode == 0, resumed.stderr
    assert cli.run("status", "ctrl-c").stdout.startswith("job ctrl-c: running  0/40 images")


# --- 6. no worker running --------------------------------------------------------------


def test_status_and_wait_say_when_no_worker_consumes_the_queue(cli: Cli, tmp_path: Path) -> None:
    write_images(cli, "photos", ["a.jpg"])
    assert cli.run("submit", "photos", "--job", "lonely", "--model", MODEL).returncode == 0
    status = cli.run("status", "lonely")
    assert "waiting: no worker is running" in status.stdout, status.stdout
    wait = cli.start("wait", "lonely")
    time.sleep(8)
    wait.send_signal(signal.SIGINT)
    _, err = wait.communicate(timeout=20)
    assert "waiting: no worker is running" in err, err

    trainer = WorkerProcess(cli.settings, tmp_path / "trainer.log", "trainer",
                            queue=TRAIN_QUEUE).wait_ready()
    try:
        deadline = time.monotonic() + 15
        while "'train'" not in cli.run("status", "lonely").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        status = cli.run("status", "lonely")
        assert "no worker consumes the 'infer' queue" in status.stdout
        assert "serve 'train'" in status.stdout
    finally:
        trainer.stop()


# --- 7. secrets and locations ----------------------------------------------------------


def test_config_masks_the_redis_password(cli: Cli) -> None:
    cli.extra["RSTREAM_REDIS_URL"] = "redis://user:s3cret@127.0.0.1:6399/2"
    result = cli.run("config")
    assert result.returncode == 0
    assert "RSTREAM_REDIS_URL=redis://****@127.0.0.1:6399/2" in result.stdout
    assert "s3cret" not in result.stdout


@pytest.mark.parametrize("name", ["RSTREAM_RESULTS", "RSTREAM_MODELS", "RSTREAM_TRAIN_DATA"])
@pytest.mark.parametrize("value", ["/etc", "../elsewhere", "file:///tmp/x"])
def test_a_local_location_outside_the_root_is_refused_when_settings_load(
        cli: Cli, name: str, value: str) -> None:
    cli.extra[name] = value
    one_line_error(cli.run("jobs"), f"{name}={value!r}", "outside RSTREAM_STORAGE_ROOT")


# --- 8. registry and training commands -------------------------------------------------


def test_promoting_the_production_version_changes_nothing(cli: Cli) -> None:
    from rstream.worker.model.loader import load_model, save_model
    from rstream.worker.model.preprocess import Preprocessing

    registry = Registry(Storage(cli.settings), cli.settings.models)
    module = load_model("random:resnet18:classes=2").module
    first, second = (save_model(registry, "m", module, arch="resnet18", classes=["a", "b"],
                                preprocessing=Preprocessing()) for _ in range(2))
    assert cli.run("models", "promote", f"m@{first}").returncode == 0
    assert cli.run("models", "promote", f"m@{second}").returncode == 0
    again = cli.run("models", "promote", f"m@{second}")
    assert again.returncode == 0 and "already in production; nothing changed" in again.stdout
    rolled = cli.run("models", "rollback", "m")
    assert f"production is back to {first}" in rolled.stdout, rolled.stdout + rolled.stderr


def test_train_passes_data_and_checks_set_on_this_side(cli: Cli) -> None:
    sent = cli.run("train", "--data", "labelled/", "--set", "batch_size=8")
    assert sent.returncode == 0, sent.stderr
    run = sent.stdout.strip()
    [raw] = cli.redis().lrange(TRAIN_QUEUE, 0, -1)
    kwargs = json.loads(base64.b64decode(json.loads(raw)["body"]))[1]
    assert kwargs["data"] == "labelled/" and kwargs["overrides"] == {"batch_size": 8}
    status = cli.run("train", "status", run, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "queued"
    assert cli.run("train", "status", run).stdout.startswith(f"run {run}: queued\n")
    one_line_error(cli.run("train", "--set", "foo=1"), "training option 'foo' is unknown")
    one_line_error(cli.run("train", "--set", "batch_size=abc"), "batch_size='abc' is invalid")
    one_line_error(cli.run("train", "--data", "../out"), "outside RSTREAM_STORAGE_ROOT")
    one_line_error(cli.run("train", "status", "train-nope"), "fine-tune run train-nope not found")
    assert cli.redis().llen(TRAIN_QUEUE) == 1, "nothing refused was sent"


def test_a_train_preset_sends_its_options_and_flags_and_set_override_them(cli: Cli) -> None:
    sent = cli.run("train", "--preset", "digits", "--epochs", "3", "--set", "lr_fc=0.05")
    assert sent.returncode == 0, sent.stderr
    [raw] = cli.redis().lrange(TRAIN_QUEUE, 0, -1)
    kwargs = json.loads(base64.b64decode(json.loads(raw)["body"]))[1]
    expected = {k: v for k, v in PRESETS["digits"].items() if k not in ("mode", "epochs")}
    assert (kwargs["mode"], kwargs["epochs"]) == ("full", 3)
    assert kwargs["overrides"] == {**expected, "lr_fc": 0.05}
    refused = cli.run("train", "--preset", "cifar")
    assert refused.returncode == 2 and "invalid choice: 'cifar'" in refused.stderr
    assert cli.redis().llen(TRAIN_QUEUE) == 1, "nothing refused was sent"


# --- 9. help that helps ----------------------------------------------------------------


def test_version_prints_the_installed_version() -> None:
    result = subprocess.run([sys.executable, "-m", "rstream.producer.cli", "--version"], cwd=REPO,
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("rstream ")


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, deeper in _subparsers(sub):
                    yield f"{name} {inner}", deeper


def test_every_argument_and_option_has_help_and_names_its_setting() -> None:
    settings_defaults = {"model": "RSTREAM_MODEL", "chunk_size": "RSTREAM_CHUNK_SIZE",
                         "concurrency": "RSTREAM_CONCURRENCY", "topk": "RSTREAM_TOPK",
                         "name": "RSTREAM_TRAIN_MODEL", "mode": "RSTREAM_TRAIN_MODE",
                         "epochs": "RSTREAM_TRAIN_EPOCHS", "data": "RSTREAM_TRAIN_DATA"}
    missing, unnamed = [], []
    for command, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{command} {action.dest}")
            elif action.dest in settings_defaults and action.option_strings and \
                    settings_defaults[action.dest] not in action.help:
                unnamed.append(f"{command} {action.dest}")
    assert missing == [] and unnamed == []

