"""A worker told to stop (SIGTERM: a deploy, a scale-down) drains instead of dropping work.

Celery's warm shutdown already stops taking messages and lets the running chunks finish; their
messages are acknowledged as each is done. Two things are added here, at the same moment:

- what this process holds and has not started goes back to the queue at once: a chunk waiting
  for its retry's countdown (an ETA), or one waiting for a free thread. Each is rejected with
  requeue on a thread of its own (kombu puts it back at the head of its queue and drops it
  from the unacked hash),
  so another worker can take it now, not after the visibility timeout or this one's drain;
- the running chunks have ``RSTREAM_DRAIN_SECONDS`` to finish (match it with the pod's
  ``terminationGracePeriodSeconds``, a little longer); then a cold shutdown cuts them, and
  their messages go back to the queue as the connection closes (kombu restores what was
  delivered and not acknowledged), to be scored again elsewhere; the job records count each
  chunk once, so no line is written twice.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from celery.worker import state

logger = logging.getLogger(__name__)


def held_requests() -> list[object]:
    """The requests this process holds and has not started: scheduled (an ETA, a retry's
    countdown) and reserved but not yet on a thread."""
    scheduled = list(state.scheduled_requests)
    waiting = [r for r in list(state.reserved_requests) if r not in state.active_requests]
    return scheduled + [r for r in waiting if r not in scheduled]


def hand_back_held() -> int:
    """Put every held, not started request back in its queue now; returns how many."""
    handed = 0
    for request in held_requests():
        entry = getattr(request, "_eta_timer_entry", None)
        if entry is not None:
            entry.cancel()  # this process will not run it at its ETA
        task_id = getattr(request, "id", None)
        if task_id:
            state.revoked.add(task_id)  # nor when a thread frees up
        try:
            # The message itself, now: Celery's own Request.reject defers to the consumer's
            # event loop, which may wait out a second-long poll first.
            request.message.reject(requeue=True)  # type: ignore[attr-defined]
            request.acknowledged = True  # type: ignore[attr-defined]
            handed += 1
        except Exception:  # the connection may be closing: it is restored at close then
            logger.exception("could not hand chunk %s back to the queue", task_id)
    if handed:
        logger.info("shutting down: %d chunk(s) held and not started handed back to the "
                    "queue", handed)
    return handed


class DrainDeadline:
    """After ``seconds``, a cold shutdown of this process (SIGQUIT to itself), unless it has
    exited by then; :meth:`start` begins the count."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._thread = threading.Thread(target=self._run, name="rstream-drain", daemon=True)
        self._cancelled = threading.Event()

    def start(self) -> DrainDeadline:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancelled.set()

    def _run(self) -> None:
        if self._cancelled.wait(self.seconds):
            return
        logger.warning("still running chunks after RSTREAM_DRAIN_SECONDS=%g: cutting them "
                       "(cold shutdown); their messages go back to the queue", self.seconds)
        os.kill(os.getpid(), signal.SIGQUIT)


def start_draining(seconds: float) -> DrainDeadline:
    """At SIGTERM: hand back what is held (on a thread: not inside the signal handler) and
    start the deadline for what runs."""
    threading.Thread(target=hand_back_held, name="rstream-hand-back", daemon=True).start()
    return DrainDeadline(seconds).start()
