"""How a chunk task message is built and published: one at a time, or many in one pipelined
Redis round trip.

Both ways build the message with Celery's own builders (``app.amqp.create_task_message`` and
``app.amqp.send_task_message``, what ``app.send_task`` calls), so a worker cannot tell them
apart: the same headers, properties, body and routing, and the same ``task-sent`` event for
Flower (``task_send_sent_event``). Two things differ from a bare ``send_task``: the
``kwargsrepr`` (what Flower and the worker's log show of the arguments) is a short summary
instead of the first 1 KiB of the URIs, and the task registry and router are not consulted
(the task is sent by name to the infer queue, as before).

Many messages go through one kombu ``Producer`` inside ``Producer.batch()``, kombu's Redis
transport's pipeline of the LPUSH of each message and the PUBLISH of each event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu.exceptions import BatchPublishError, OperationalError

from rstream.shared.constants import INFER_QUEUE, INFER_TASK
from rstream.shared.queue.messages import ChunkMessage

logger = logging.getLogger(__name__)

# Redis commands buffered before kombu flushes the pipeline: two per chunk (the message and
# its task-sent event), so a segment of 256 chunks is one round trip.
BATCH_COMMANDS = 1024
# A batch whose flush failed is published again, whole, this many times in all: a message
# that did reach Redis is then queued twice, which is harmless (the job record counts a
# chunk once, and the chunk's part is rewritten with the same lines).
PUBLISH_ATTEMPTS = 3
RETRY_DELAY_S = 0.2


def send_chunk(app: Celery, message: ChunkMessage) -> None:
    """Send one chunk task; its id comes from (job, chunk, generation), so a chunk sent again
    is the same task."""
    with app.producer_or_acquire() as producer:
        _publish(app, producer, message)


def send_chunks(app: Celery, messages: Sequence[ChunkMessage]) -> None:
    """Send many chunk tasks in one pipelined round trip (more when there are many); each
    message is the one :func:`send_chunk` sends. Raises when the batch could not be
    published after :data:`PUBLISH_ATTEMPTS`: then any of them may or may not be queued."""
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            with app.producer_or_acquire() as producer, \
                    producer.batch(max_size=BATCH_COMMANDS):
                for message in messages:
                    _publish(app, producer, message)
            return
        except (BatchPublishError, OperationalError, ConnectionError) as exc:
            if attempt == PUBLISH_ATTEMPTS:
                raise
            logger.warning("publishing %d chunk messages failed (%s); trying again (%d/%d)",
                           len(messages), exc, attempt, PUBLISH_ATTEMPTS - 1)
            time.sleep(RETRY_DELAY_S * attempt)


def _publish(app: Celery, producer: Any, message: ChunkMessage) -> None:
    amqp = app.amqp
    task = amqp.create_task_message(
        message.task_id, INFER_TASK, (), {"message": message.to_dict()},
        reply_to=app.thread_oid, create_sent_event=app.conf.task_send_sent_event,
        ignore_result=None,  # as send_task leaves it: the app's task_ignore_result decides
        argsrepr="()", kwargsrepr=message.summary())
    with producer.connection._reraise_as_library_errors():
        amqp.send_task_message(producer, INFER_TASK, task, queue=INFER_QUEUE)
