"""How messages enter a worker: what cannot be decoded or validated is dead-lettered.

Stock kombu and Celery end the whole worker process on some malformed messages, and requeue
them, so the next worker dies too:

- an envelope that is not JSON, or whose body is not valid base64, raises inside kombu's Redis
  transport while it delivers the message (:class:`Channel` below);
- a body that decodes to bytes (empty, no content-encoding) raises a TypeError in Celery's
  task strategy (:class:`Consumer` below).

Others are refused by Celery with a log line only (pickle, unknown tasks, messages without a task
header, undecodable JSON bodies). Here every one of them is removed from the queue and kept in the
dead-letter list (:mod:`rstream.shared.queue.deadletters`) with its reason; the worker serves on.
The task itself dead-letters a message whose fields do not validate (``worker/tasks.py``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from rstream.shared.queue import deadletters

logger = logging.getLogger(__name__)


def _record(client: Any, reason: str, **fields: Any) -> None:
    try:
        deadletters.record(client, reason, **fields)
    except Exception:  # Redis is gone: the message is lost either way; say so
        logger.exception("could not keep a refused message in the dead-letter list (%s)",
                         reason)
    logger.error("message refused and dead-lettered: %s", reason)


class _DeadLettering:
    """What :class:`Channel` and :class:`SentinelChannel` change in kombu's Redis channel:
    an envelope it cannot parse is dead-lettered."""

    client: Any
    connection: Any
    connection_errors: Any
    sep: str
    _queue_cycle: Any
    _in_poll: Any
    Message: Any
    conn_or_acquire: Any

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own method (5.7), with the decode step guarded: the popped item is in hand
        # here and nowhere else, so this is the one place that can keep it.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP",
                                                        **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            try:
                payload = loads(bytes_to_str(item))
                _check_envelope(self.Message(payload, channel=self))
            except Exception as exc:
                with self.conn_or_acquire() as client:
                    _record(client, f"undecodable envelope: {type(exc).__name__}: {exc}",
                            queue=dest, raw=item)
                return True
            self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None  # as kombu does
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()


def _check_envelope(message: Any) -> None:
    """What kombu's own bookkeeping needs before Celery sees the message (it would raise
    there, in the transport, and end the worker)."""
    if not isinstance(message.delivery_tag, str) or not message.delivery_tag:
        raise ValueError("properties.delivery_tag is not a string")
    if not isinstance(message.delivery_info or {}, dict):
        raise ValueError("properties.delivery_info is not an object")


class Channel(_DeadLettering, kombu_redis.Channel):
    """kombu's Redis channel, except that an envelope it cannot parse is dead-lettered."""


class SentinelChannel(_DeadLettering, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel, except that an envelope it cannot parse is dead-lettered."""


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`; set as ``broker_transport``."""

    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with :class:`SentinelChannel` (for a ``redis+sentinel://``
    ``RSTREAM_REDIS_URL``); set as ``broker_transport``."""

    Channel = SentinelChannel


class Consumer(CeleryConsumer):
    """Celery's consumer, except that every message it would crash on or drop is dead-lettered.

    Set as ``worker_consumer``.
    """

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> None:
            try:
                handle(message)
            except Exception as exc:  # e.g. a TypeError from a body that decoded to bytes
                self._refuse(message, f"undecodable task message: {type(exc).__name__}: {exc}")

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._refuse(message, f"body cannot be decoded: {type(exc).__name__}: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._refuse(message, "not a task message (no task header)")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = (message.headers or {}).get("task")
        self._refuse(message, f"unknown task {name!r}")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._refuse(message, f"refused: {type(exc).__name__}: {exc}")

    def _refuse(self, message: Any, reason: str) -> None:
        with message.channel.conn_or_acquire() as client:
            info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
            _record(client, reason, queue=info.get("routing_key"),
                    headers=message.headers if isinstance(message.headers, dict) else None,
                    raw=message.body if isinstance(message.body, (bytes, str)) else None)
        message.reject_log_error(logger, self.connection_errors)
