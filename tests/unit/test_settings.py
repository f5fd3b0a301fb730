"""Settings: defaults, validation that names the variable, value and fix, the generated page."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rstream.shared.errors import ConfigError
from rstream.shared.settings import Settings, configuration_doc, env_name, markdown_table
from tests.settings import make_settings

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

FIELDS = [f.name for f in dataclasses.fields(Settings)]

# One wrong value for every setting; a new setting must add its own here.
BAD_VALUES = {
    "redis_url": "http://127.0.0.1:6379",
    "storage_root": "s3://bucket/root",
    "results": "http://example.com/results",
    "results_format": "csv",
    "parquet_rows_per_file": "0",
    "models": "s3:///models",
    "train_data": "ftp://host/train",
    "allowed_buckets": "s3://bucket",
    "s3_endpoint_url": "localhost:9000",
    "s3_region": "us east 1",
    "s3_max_attempts": "0",
    "s3_connect_timeout": "0",
    "s3_read_timeout": "soon",
    "chunk_size": "0",
    "max_pending_chunks": "-1",
    "max_batch": "4097",
    "max_delay_ms": "inf",
    "device": "gpu",
    "precision": "fp8",
    "calibration": "ftp://host/images",
    "int8_min_agreement": "1.5",
    "forward": "jit",
    "model": "s3://bucket/model.pt",
    "topk": "0",
    "max_image_pixels": "1e9",
    "max_object_bytes": "0",
    "decode_device": "gpu",
    "decode_threads": "0",
    "concurrency": "257",
    "task_time_limit": "5",
    "drain_seconds": "-1",
    "visibility_timeout": "0",
    "task_max_retries": "101",
    "job_ttl": "59",
    "reload_interval": "nan",
    "train_schedule": "0 3 * *",
    "promote_tolerance": "-0.1",
    "train_model": "../escape",
    "train_mode": "everything",
    "train_epochs": "0",
    "train_base": "resnet18:imagenet:x",
    "train_lock_ttl": "5",
    "train_time_limit": "10",
    "metrics_port": "70000",
    "metrics_host": "every interface",
    "exporter_port": "0",
    "wedge_timeout": "0.5",
    "log_format": "logfmt",
    "backend": "tensorrt",
    "log_level": "verbose",
    "api_host": "not a host!",
    "api_port": "0",
    "api_tokens": "short:read",
    "api_tokens_file": "a\x00b",
    "api_max_body_bytes": "10",
    "api_max_uris": "0",
}


def test_defaults() -> None:
    settings = make_settings()
    assert settings == Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.allowed_buckets == ()
    assert settings.s3_endpoint_url == ""
    assert (settings.chunk_size, settings.max_batch, settings.max_delay_ms) == (64, 64, 10.0)
    assert settings.visibility_timeout > settings.task_time_limit
    assert settings.device == "auto"
    assert settings.s3_max_attempts == 5


def test_make_settings_ignores_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSTREAM_CHUNK_SIZE", "7")
    monkeypatch.setenv("RSTREAM_TYPO", "1")
    assert make_settings().chunk_size == 64
    monkeypatch.delenv("RSTREAM_TYPO")
    assert Settings.from_env().chunk_size == 7


def test_environment_values_are_parsed_and_normalised() -> None:
    settings = Settings.from_env({
        "RSTREAM_ALLOWED_BUCKETS": " b , a,,a ",
        "RSTREAM_DEVICE": "CUDA:1",
        "RSTREAM_MAX_DELAY_MS": "2.5",
        "RSTREAM_TRAIN_SCHEDULE": "0   3 * * *",
        "PATH": "/usr/bin",  # not ours: ignored
    })
    assert settings.allowed_buckets == ("a", "b")
    assert settings.device == "cuda:1"
    assert settings.max_delay_ms == 2.5
    assert settings.train_schedule == "0 3 * * *"


def test_every_setting_has_a_bad_value_in_this_table() -> None:
    assert sorted(BAD_VALUES) == sorted(FIELDS)


@pytest.mark.parametrize("field_name", FIELDS)
def test_a_bad_value_names_its_variable_the_value_and_the_fix(field_name: str) -> None:
    variable, bad = env_name(field_name), BAD_VALUES[field_name]
    fix = next(f for f in dataclasses.fields(Settings) if f.name == field_name).metadata["fix"]
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: bad})
    message = str(info.value)
    assert variable in message
    if field_name == "api_tokens":  # a secret: never printed, even when wrong
        assert bad not in message and "'****'" in message
    else:
        assert repr(bad) in message
    assert message.endswith(fix)


@pytest.mark.parametrize("field_name", ["max_batch", "device", "allowed_buckets"])
def test_values_given_in_code_are_validated_too(field_name: str) -> None:
    with pytest.raises(ConfigError, match=env_name(field_name)):
        make_settings(**{field_name: BAD_VALUES[field_name]})
    with pytest.raises(ConfigError, match=env_name(field_name)):
        dataclasses.replace(make_settings(), **{field_name: BAD_VALUES[field_name]})  # type: ignore[arg-type]


def test_a_misspelt_override_is_refused() -> None:
    with pytest.raises(TypeError, match="max_btach"):
        make_settings(max_btach=8)


def test_an_unknown_rstream_variable_is_refused() -> None:
    with pytest.raises(ConfigError, match="RSTREAM_MAX_BATCHES") as info:
        Settings.from_env({"RSTREAM_MAX_BATCHES": "8"})
    assert "docs/configuration.md" in str(info.value)


@pytest.mark.parametrize("visibility", ["900", "899"])
def test_visibility_timeout_must_exceed_the_task_time_limit(visibility: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"RSTREAM_VISIBILITY_TIMEOUT": visibility,
                           "RSTREAM_TASK_TIME_LIMIT": "900"})
    message = str(info.value)
    assert "RSTREAM_VISIBILITY_TIMEOUT" in message
    assert "RSTREAM_TASK_TIME_LIMIT" in message
    assert "raise RSTREAM_VISIBILITY_TIMEOUT" in message


def test_settings_are_frozen() -> None:
    settings = make_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_batch = 8  # type: ignore[misc]


def test_as_env_rebuilds_the_same_settings() -> None:
    settings = make_settings(
        allowed_buckets=("images", "models"), s3_endpoint_url="http://127.0.0.1:9000",
        max_delay_ms=2.5, device="cuda:0", model="random:resnet18:classes=10",
        results="s3://images/out", promote_tolerance=0.01, max_pending_chunks=0)
    env = settings.as_env()
    assert sorted(env) == sorted(env_name(name) for name in FIELDS)
    assert all(isinstance(value, str) for value in env.values())
    assert Settings.from_env(env) == settings


def test_docs_configuration_is_generated_from_the_settings() -> None:
    assert CONFIGURATION.read_text(encoding="utf-8") == configuration_doc(), (
        "docs/configuration.md is stale: run `rstream config --markdown > "
        "docs/configuration.md`")


def test_markdown_table_has_a_row_per_setting_with_its_default() -> None:
    rows = markdown_table().splitlines()[2:]
    assert len(rows) == len(FIELDS)
    assert rows[0].startswith("| `RSTREAM_REDIS_URL` | `redis://127.0.0.1:6379/0` |")
    assert any(row.startswith("| `RSTREAM_ALLOWED_BUCKETS` | (empty) |") for row in rows)
