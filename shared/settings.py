"""Settings: one frozen object built from ``RSTREAM_*`` environment variables.

Build it once at an edge (the CLI, the worker start-up) with :meth:`Settings.from_env` and pass
it down. Every field is documented here; ``docs/configuration.md`` is generated from these docs
(``rstream config --markdown``) and a test keeps the two identical.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from redis.connection import parse_url

from rstream.shared.connections import is_sentinel, parse_sentinel_url
from rstream.shared.errors import ConfigError, RstreamError
from rstream.shared.masking import mask_url
from rstream.shared.models import refs
from rstream.shared.names import MODEL_NAME

ENV_PREFIX = "RSTREAM_"

Parser = Callable[[str], Any]
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}(?:\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*")


def _setting(default: Any, doc: str, parse: Parser, fix: str) -> Any:
    return field(default=default, metadata={"doc": doc, "parse": parse, "fix": fix})


def _int(low: int, high: int | None = None) -> Parser:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < low or (high is not None and value > high):
            raise ValueError(f"out of range [{low}, {high if high is not None else 'inf'}]")
        return value

    return parse


def _float(low: float) -> Parser:
    def parse(raw: str) -> float:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        if value < low:
            raise ValueError(f"below {low}")
        return value

    return parse


def _choice(*choices: str) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"not one of {', '.join(choices)}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def _directory(raw: str) -> str:
    value = raw.strip()
    if not value or "://" in value:
        raise ValueError("not a directory path")
    return value


def _location(raw: str) -> str:
    value = raw.strip()
    scheme = urlparse(value).scheme
    if not value:
        raise ValueError("empty")
    if scheme == "s3" and not value[len("s3://"):].partition("/")[0]:
        raise ValueError("no bucket after s3://")
    if len(scheme) > 1 and scheme not in ("s3", "file"):  # one letter: a Windows drive
        raise ValueError(f"{scheme}:// is not supported")
    return value


def _optional_location(raw: str) -> str:
    return _location(raw) if raw.strip() else ""


def _fraction(raw: str) -> float:
    value = _float(0.0)(raw)
    if value > 1.0:
        raise ValueError("above 1")
    return value


def _region(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise ValueError("not a region name")
    return value


def _model(raw: str) -> str:
    value = raw.strip()
    if value:  # empty: no default model
        try:
            refs.parse(value)
        except RstreamError as exc:
            raise ValueError(str(exc)) from None
    return value


def _redis_url(raw: str) -> str:
    value = raw.strip()
    if is_sentinel(value):
        parse_sentinel_url(value)  # its messages name the part, never the password
        return value
    if urlparse(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("not a redis://, rediss://, unix:// or redis+sentinel:// URL")
    try:
        parse_url(value)  # what redis-py will make of it, now rather than at the first call
    except ValueError:  # its message may quote the password
        raise ValueError("redis-py cannot read it (percent-encode @ : / in a password, "
                         "e.g. %40 for @)") from None
    return value


def _http_url(raw: str) -> str:
    value = raw.strip()
    if value and urlparse(value).scheme not in ("http", "https"):
        raise ValueError("not an http:// or https:// URL")
    return value


def _buckets(raw: str) -> tuple[str, ...]:
    names = tuple(sorted({part.strip() for part in raw.split(",") if part.strip()}))
    for name in names:
        if "/" in name or ":" in name:
            raise ValueError(f"{name!r} is not a bare bucket name")
    return names


def _device(raw: str) -> str:
    value = raw.strip().lower()
    if value in ("auto", "cpu", "cuda"):
        return value
    if value.startswith("cuda:") and value[5:].isdigit():
        return value
    raise ValueError("not auto, cpu, cuda or cuda:N")


TOKEN_PATTERN = r"[A-Za-z0-9_.~-]{16,256}"
API_SCOPES = ("read", "submit", "admin")


def parse_tokens(raw: str) -> dict[str, frozenset[str]]:
    """``TOKEN:SCOPE[+SCOPE],...`` (commas or new lines) as {token: scopes}; ValueError."""
    tokens: dict[str, frozenset[str]] = {}
    for entry in (part.strip() for part in re.split(r"[,\n]", raw)):
        if not entry or entry.startswith("#"):
            continue
        token, colon, scopes = entry.partition(":")
        names = frozenset(s.strip() for s in scopes.split("+") if s.strip())
        if not colon or not re.fullmatch(TOKEN_PATTERN, token) or not names:
            raise ValueError("not TOKEN:SCOPE[+SCOPE] with a token of 16+ characters")
        if names - set(API_SCOPES):
            raise ValueError(f"scopes are {', '.join(API_SCOPES)}")
        tokens[token] = names
    return tokens


def _tokens(raw: str) -> str:
    parse_tokens(raw)
    return raw.strip()


def _optional_path(raw: str) -> str:
    value = raw.strip()
    if "\x00" in value:
        raise ValueError("not a path")
    return value


def _cron(raw: str) -> str:
    value = " ".join(raw.split())
    if len(value.split(" ")) != 5:
        raise ValueError("not a five-field cron expression")
    from celery.schedules import crontab  # the parser beat will use; imported only here

    minute, hour, day, month, weekday = value.split(" ")
    crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month,
            day_of_week=weekday)  # raises ValueError on a field it cannot parse
    return value


def _host(raw: str) -> str:
    value = raw.strip()
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME_RE.fullmatch(value):
            raise ValueError("not an IP address or host name") from None
    return value


def _model_name(raw: str) -> str:
    value = raw.strip()
    if not MODEL_NAME.matches(value):
        raise ValueError("not a model name")
    return value


@dataclass(frozen=True)
class Settings:
    """Every setting of rstream, validated; build with :meth:`from_env`."""

    redis_url: str = _setting(
        "redis://127.0.0.1:6379/0",
        "Redis URL: Celery broker, job records and locks; "
        "redis+sentinel://HOST:PORT,HOST:PORT/MASTER/DB for Sentinel.",
        _redis_url, "use redis://HOST:PORT/DB or redis+sentinel://HOST:PORT,HOST:PORT/MASTER/DB")
    storage_root: str = _setting(
        "./rstream-data", "Local storage root; plain paths and file:// URIs resolve inside it.",
        _directory, "use a directory path")
    results: str = _setting(
        "results", "Where result parts and manifests go: a path under the root or s3://bucket/prefix.",
        _location, "use a path or s3://bucket/prefix")
    results_format: str = _setting(
        "jsonl", "Default results format of a job, recorded in its record: jsonl or parquet "
        "(parts stay JSONL; at the job's end they are compacted into scores-NNNNN.parquet "
        "files, needs pyarrow: pip install 'rstream[parquet]').",
        _choice("jsonl", "parquet"), "use jsonl or parquet")
    parquet_rows_per_file: int = _setting(
        1_000_000, "Parquet results: at most this many rows per scores-NNNNN.parquet file "
        "(the last file holds the rest).",
        _int(1), "use an integer >= 1")
    models: str = _setting(
        "models", "Model registry location: a path under the root or s3://bucket/prefix.",
        _location, "use a path or s3://bucket/prefix")
    train_data: str = _setting(
        "train", "Labelled training images, {train_data}/{class}/*, or a labels table "
        "(.csv .jsonl .parquet).",
        _location, "use a path, s3://bucket/prefix or a labels table")
    allowed_buckets: tuple[str, ...] = _setting(
        (), "Comma-separated S3 buckets that may be read or written; empty allows any.",
        _buckets, "use bucket names separated by commas")
    s3_endpoint_url: str = _setting(
        "", "S3 endpoint for MinIO or another S3-compatible server; empty means AWS.",
        _http_url, "use http://HOST:PORT or leave it empty")
    s3_region: str = _setting(
        "us-east-1", "S3 region.", _region, "use a region name such as us-east-1")
    s3_max_attempts: int = _setting(
        5, "Attempts per S3 request (botocore standard retry mode), first try included.",
        _int(1, 20), "use an integer from 1 to 20")
    s3_connect_timeout: float = _setting(
        5.0, "S3 connect timeout in seconds.", _float(0.1), "use a number of seconds >= 0.1")
    s3_read_timeout: float = _setting(
        30.0, "S3 read timeout in seconds.", _float(0.1), "use a number of seconds >= 0.1")
    chunk_size: int = _setting(
        64, "Images per chunk task.", _int(1, 10_000), "use an integer from 1 to 10000")
    max_pending_chunks: int = _setting(
        256, "Producer waits while the infer queue holds more chunks than this; 0 turns it off.",
        _int(0), "use an integer >= 0")
    max_batch: int = _setting(
        64, "Most images in one device batch.", _int(1, 4096), "use an integer from 1 to 4096")
    max_delay_ms: float = _setting(
        10.0, "Longest wait in milliseconds to fill a device batch.", _float(0.0),
        "use a number of milliseconds >= 0")
    device: str = _setting(
        "auto", "auto, cpu, cuda or cuda:N; one process serves one device.", _device,
        "use auto, cpu, cuda or cuda:N")
    precision: str = _setting(
        "auto", "auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16 autocast, or int8 (ONNX "
        "Runtime static quantization, CPU only; see docs/models.md).",
        _choice("auto", "fp32", "fp16", "bf16", "int8"), "use auto, fp32, fp16, bf16 or int8")
    calibration: str = _setting(
        "", "int8: the calibration images, a folder/prefix or a file of URIs (one a line, or "
        "JSONL with \"uri\"); empty: what `rstream models quantize` recorded, else the model's "
        "validation split from `rstream train`.", _optional_location,
        "use a path, s3://bucket/prefix or a .txt/.jsonl list of URIs")
    int8_min_agreement: float = _setting(
        0.98, "int8: a quantized model whose top-1 agreement with fp32 on held-out images is "
        "below this is refused.", _fraction, "use a number from 0 to 1")
    forward: str = _setting(
        "eager", "Eager-backend forward: eager, compile (torch.compile, inductor) or cudagraphs "
        "(CUDA graphs per batch-size bucket, CUDA only); compiled forwards pad batches to "
        "buckets.", _choice("eager", "compile", "cudagraphs"), "use eager, compile or cudagraphs")
    backend: str = _setting(
        "auto", "auto (ONNX Runtime on the CPU when installed, eager PyTorch on CUDA), eager "
        "or onnx (CPU only).", _choice("auto", "eager", "onnx"), "use auto, eager or onnx")
    model: str = _setting(
        "", "Default model reference: NAME, NAME@VERSION, torchvision:ARCH:WEIGHTS or random:ARCH.",
        _model, "use a model reference such as random:resnet18")
    topk: int = _setting(
        5, "Classes reported per image.", _int(1, 100), "use an integer from 1 to 100")
    max_image_pixels: int = _setting(
        64_000_000, "Images declaring more pixels are refused before decoding.",
        _int(1), "use an integer >= 1")
    max_object_bytes: int = _setting(
        128 * 1024 * 1024, "Objects (images) larger than this many bytes are refused before "
        "they are read.", _int(1), "use an integer number of bytes >= 1")
    decode_device: str = _setting(
        "auto", "Where JPEGs are decoded: cpu (whole, in the decode threads), cuda (in batches "
        "with nvJPEG on the model's GPU; the rest stays on the CPU), batched (the cuda path's "
        "code on any device, for tests) or auto, which is cpu until a GPU run measures cuda.",
        _choice("auto", "cpu", "cuda", "batched"), "use auto, cpu, cuda or batched")
    decode_threads: int = _setting(
        4, "Threads per worker process that fetch and decode images.", _int(1, 256),
        "use an integer from 1 to 256")
    concurrency: int = _setting(
        2, "Chunk tasks one worker process runs at once (its thread pool).", _int(1, 256),
        "use an integer from 1 to 256")
    task_time_limit: int = _setting(
        900, "Hard time limit of one chunk task in seconds.", _int(10), "use an integer >= 10")
    drain_seconds: float = _setting(
        30.0, "Seconds a worker told to stop (SIGTERM) lets its running chunks finish before it "
        "cuts them and hands them back; keep the pod's terminationGracePeriodSeconds above it.",
        _float(0.0), "use a number of seconds >= 0")
    visibility_timeout: int = _setting(
        3600, "Seconds before Redis redelivers an unacknowledged task; must exceed the time limit.",
        _int(1), "use an integer > RSTREAM_TASK_TIME_LIMIT")
    task_max_retries: int = _setting(
        3, "Retries of a chunk after transient storage errors.", _int(0, 100),
        "use an integer from 0 to 100")
    job_ttl: int = _setting(
        7 * 24 * 3600, "Seconds a job record stays in Redis after its last update.", _int(60),
        "use an integer >= 60")
    reload_interval: float = _setting(
        30.0, "Seconds between checks of the production pointer by infer workers.", _float(0.0),
        "use a number of seconds >= 0")
    train_schedule: str = _setting(
        "0 3 * * *", "Cron expression (UTC) for the scheduled fine-tune.", _cron,
        "use five cron fields, e.g. '0 3 * * *'")
    promote_tolerance: float = _setting(
        0.0, "A candidate is promoted when its accuracy > production's minus this (a tie "
        "keeps production).",
        _float(0.0), "use a number >= 0")
    train_model: str = _setting(
        "rstream", "Registry name that scheduled fine-tunes publish to and train from.",
        _model_name, "use letters, digits, '.', '_' or '-'")
    train_mode: str = _setting(
        "finetune", "feature-extract (new fc only), finetune (layer4 + fc) or full (every "
        "layer, for a random init).", _choice("feature-extract", "finetune", "full"),
        "use feature-extract, finetune or full")
    train_epochs: int = _setting(
        10, "Most epochs of one fine-tune (early stopping may end it sooner).", _int(1, 1000),
        "use an integer from 1 to 1000")
    train_base: str = _setting(
        "", "Start of a fine-tune when TRAIN_MODEL has no production version yet "
        "(empty: torchvision ImageNet weights, if cached).", _model,
        "use a model reference such as random:resnet18:seed=0")
    train_lock_ttl: int = _setting(
        900, "Seconds the single-flight training lock lives without a heartbeat.", _int(10),
        "use an integer >= 10")
    train_time_limit: int = _setting(
        6 * 3600, "Hard time limit of one fine-tune task in seconds.", _int(60),
        "use an integer >= 60")
    metrics_port: int = _setting(
        0, "Port of a worker's /metrics, /healthz and /readyz endpoints (rstream worker adds 1 "
        "per extra process); 0 turns them off.", _int(0, 65535),
        "use a port number, or 0 for none")
    metrics_host: str = _setting(
        "127.0.0.1", "Address the worker endpoints, rstream exporter and a watcher's metrics "
        "listen on; 0.0.0.0 for every interface.", _host,
        "use an IP address such as 127.0.0.1 or 0.0.0.0")
    exporter_port: int = _setting(
        9808, "Port of rstream exporter's /metrics (queue depth, oldest queued chunk).",
        _int(1, 65535), "use a port number from 1 to 65535")
    wedge_timeout: float = _setting(
        300.0, "Seconds the model thread may spend on one batch, or leave images waiting, "
        "before /healthz reports it wedged.", _float(1.0), "use a number of seconds >= 1")
    log_level: str = _setting(
        "info", "Logging level.", _choice("debug", "info", "warning", "error"),
        "use debug, info, warning or error")
    log_format: str = _setting(
        "text", "text (one readable line per record) or json (one JSON object per line).",
        _choice("text", "json"), "use text or json")
    api_host: str = _setting(
        "127.0.0.1", "Address `rstream api` listens on; anything but 127.0.0.1 needs tokens.",
        _host, "use an IP address such as 127.0.0.1 or 0.0.0.0")
    api_port: int = _setting(
        8080, "Port of `rstream api`.", _int(1, 65535), "use a port number")
    api_tokens: str = _setting(
        "", "API bearer tokens and their scopes: TOKEN:SCOPE[+SCOPE],... with scopes read, "
        "submit, admin (shown masked).", _tokens, "use TOKEN:read+submit (tokens of 16+ "
        "letters, digits, '-', '_' or '.')")
    api_tokens_file: str = _setting(
        "", "A file of API tokens, one TOKEN:SCOPE[+SCOPE] per line (a mounted secret).",
        _optional_path, "use a file path, or leave it empty")
    api_max_body_bytes: int = _setting(
        1024 * 1024, "Largest HTTP request body `rstream api` accepts.", _int(1024),
        "use an integer number of bytes >= 1024")
    api_max_uris: int = _setting(
        10_000, "Most URIs in one inline HTTP submission.", _int(1, 1_000_000),
        "use an integer from 1 to 1000000")

    def __post_init__(self) -> None:
        # Every value passes its parser, from the environment or from code (overrides,
        # dataclasses.replace), so no path around validation exists.
        for f in dataclasses.fields(self):
            raw = _as_text(getattr(self, f.name))
            object.__setattr__(self, f.name, _parse(f, env_name(f.name), raw))
        for name in ("results", "models", "train_data"):
            _inside_root(env_name(name), getattr(self, name), self.storage_root)
        if self.visibility_timeout <= self.task_time_limit:
            raise ConfigError(
                f"RSTREAM_VISIBILITY_TIMEOUT={self.visibility_timeout} must exceed "
                f"RSTREAM_TASK_TIME_LIMIT={self.task_time_limit}, or Redis redelivers chunks that "
                "are still running: raise RSTREAM_VISIBILITY_TIMEOUT")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); ``overrides`` win over both."""
        env = os.environ if env is None else env
        names = {f.name: env_name(f.name) for f in dataclasses.fields(cls)}
        # Raw text here; __post_init__ parses it.
        values: dict[str, Any] = {key: env[name] for key, name in names.items() if name in env}
        values.update(overrides)  # a misspelt override is a TypeError from the constructor
        unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in _ENV_NAMES)
        if unknown:
            raise ConfigError(
                f"unknown setting {unknown[0]}: check its spelling against the settings "
                "in docs/configuration.md (rstream config --markdown)")
        return cls(**values)

    def as_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings, e.g. for a child process."""
        return {env_name(f.name): _as_text(getattr(self, f.name))
                for f in dataclasses.fields(self)}

    def shown(self) -> dict[str, str]:
        """:meth:`as_env` with passwords masked: what ``rstream config`` and logs print."""
        shown = self.as_env()
        shown[env_name("redis_url")] = mask_url(self.redis_url)
        shown[env_name("s3_endpoint_url")] = mask_url(self.s3_endpoint_url)
        if self.api_tokens:
            shown[env_name("api_tokens")] = "****"
        return shown


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _as_text(value: Any) -> str:
    """A value as its environment variable spells it."""
    if isinstance(value, (tuple, list, set, frozenset)):
        return ",".join(str(v) for v in value)
    return str(value)


def _parse(f: dataclasses.Field[Any], name: str, raw: str) -> Any:
    try:
        return f.metadata["parse"](raw)
    except ValueError as exc:
        shown = mask_url(raw) if f.name in ("redis_url", "s3_endpoint_url") else \
            "****" if f.name == "api_tokens" else raw
        raise ConfigError(f"{name}={shown!r} is invalid ({exc}): {f.metadata['fix']}") from None


def _inside_root(name: str, value: str, root: str) -> None:
    """A local location (not s3://) must resolve inside the storage root, as every read and
    write there will be checked to; say so now rather than at the first write."""
    if value.startswith("s3://"):
        return
    path = "/" + value[len("file://"):].partition("/")[2] if value.startswith("file://") \
        else value
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, path))
    if target != real_root and not target.startswith(real_root + os.sep):
        raise ConfigError(f"{name}={value!r} resolves to {target}, outside "
                          f"RSTREAM_STORAGE_ROOT ({real_root}): use a path inside the root, "
                          "or s3://bucket/prefix")


_ENV_NAMES = frozenset(env_name(f.name) for f in dataclasses.fields(Settings))


CONFIGURATION_INTRO = """\
# Configuration

Every setting is an environment variable, validated at start: a wrong value fails with a
message that names the variable, the value and the fix (`RSTREAM_CHUNK_SIZE='0' is invalid
(out of range [1, 10000]): use an integer from 1 to 10000`). `rstream config` prints the values
in effect; unknown `RSTREAM_*` variables are refused, so a typo does not pass silently.

This page is generated from the settings' own documentation in `shared/settings.py` by
`rstream config --markdown > docs/configuration.md`; a test keeps the two identical.
"""


def configuration_doc() -> str:
    """``docs/configuration.md``: the introduction and the table of every setting."""
    return f"{CONFIGURATION_INTRO}\n{markdown_table()}\n"


def markdown_table() -> str:
    """The table of every setting, its default and its meaning, from the field docs."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        shown = _as_text(f.default)
        shown = f"`{shown}`" if shown else "(empty)"
        lines.append(f"| `{env_name(f.name)}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(lines)
