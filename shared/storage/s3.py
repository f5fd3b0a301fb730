"""The S3 backend: any S3-compatible endpoint through boto3, errors mapped to our hierarchy.

Retries are botocore's own ``standard`` mode (bounded attempts with jittered backoff on
throttling, 5xx answers and connection errors); what still fails after them is mapped here to
TransientError or PermanentError with the URI in the message.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from rstream.shared.errors import (
    AccessDeniedError,
    NotFoundError,
    PermanentError,
    PreconditionFailed,
    TransientError,
)
from rstream.shared.storage.backend import Backend, ObjectInfo, check_size

if TYPE_CHECKING:
    from rstream.shared.settings import Settings

_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "TooManyRequestsException",
})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId",
                           "SignatureDoesNotMatch", "AllAccessDisabled"})


def make_client(settings: Settings) -> Any:
    """A boto3 S3 client with bounded standard retries and timeouts from ``settings``."""
    config = Config(
        # total_max_attempts counts the first try; botocore's "max_attempts" counts retries only.
        retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        max_pool_connections=max(10, settings.decode_threads * settings.concurrency),
    )
    # A session per client: boto3's default session is not thread-safe to create clients from.
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region,
        config=config,
    )


class S3Backend(Backend):
    """One bucket; keys are object keys."""

    def __init__(self, bucket: str, settings: Settings, client: Any = None) -> None:
        self.bucket = bucket
        self.client = client if client is not None else make_client(settings)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def read_versioned(self, key: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            size = int(response["ContentLength"])
            if max_bytes is not None and size > max_bytes:  # known from the headers alone
                response["Body"].close()
                check_size(self.uri(key), size, max_bytes)
            data = response["Body"].read()  # botocore checks it against the Content-Length
        except (ClientError, BotoCoreError) as exc:
            _raise_mapped(exc, self.uri(key))
        return data, response["ETag"]

    def write(self, key: str, data: bytes, *, if_match: str | None = None,
              if_none_match: bool = False) -> None:
        # A single PUT is atomic in S3: readers see the old object or the new one.
        extra: dict[str, str] = {}
        if if_match is not None:
            extra["IfMatch"] = if_match
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except ClientError as exc:
            if if_match is not None and exc.response.get("Error", {}).get("Code") == "NoSuchKey":
                # S3 answers 404 when the object to match is gone; for us that is a lost race.
                raise PreconditionFailed(f"{self.uri(key)}: no longer exists") from exc
            _raise_mapped(exc, self.uri(key))
        except BotoCoreError as exc:
            _raise_mapped(exc, self.uri(key))

    def stat(self, key: str) -> ObjectInfo:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            _raise_mapped(exc, self.uri(key))
        return ObjectInfo(key, response["ContentLength"], response["ETag"])

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        extra = {"StartAfter": start_after} if start_after else {}
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix, **extra)
        try:
            for page in pages:  # one page (at most 1,000 keys) in memory at a time
                for item in page.get("Contents", ()):
                    yield ObjectInfo(item["Key"], item["Size"], item["ETag"])
        except (ClientError, BotoCoreError) as exc:
            _raise_mapped(exc, self.uri(prefix))

    def read_lines(self, key: str) -> Iterator[str]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            for number, raw in enumerate(body.iter_lines(64 * 1024, keepends=True), 1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise PermanentError(f"{self.uri(key)}:{number}: not UTF-8 text "
                                         f"({exc.reason})") from None
        except (ClientError, BotoCoreError) as exc:
            _raise_mapped(exc, self.uri(key))

    def open_binary(self, key: str) -> BinaryIO:
        # Spooled to disk, not memory: a Parquet reader seeks, and a manifest may be large.
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - the caller closes it
        try:
            self.client.download_fileobj(self.bucket, key, spool)
        except (ClientError, BotoCoreError) as exc:
            spool.close()
            _raise_mapped(exc, self.uri(key))
        spool.seek(0)
        return spool

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            _raise_mapped(exc, self.uri(key))


def _raise_mapped(exc: Exception, uri: str) -> NoReturn:
    raise map_error(exc, uri) from exc


def map_error(exc: Exception, uri: str) -> Exception:
    """The rstream error for a botocore failure on ``uri``."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{uri}: {code or status} {error.get('Message', '')}".rstrip()
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFoundError(message)
        if code in _DENIED_CODES or status == 403:
            return AccessDeniedError(message)
        if code == "PreconditionFailed" or status == 412:
            return PreconditionFailed(message)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientError(message + " (after retries)")
        return PermanentError(message)
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
        return TransientError(f"{uri}: {exc} (after retries)")
    return PermanentError(f"{uri}: {exc}")
