"""One scheduled or manual fine-tune: take the lock, train, record progress and the outcome.

The training itself is :func:`rstream.worker.finetune.run.run_finetune`; this module adds what
running it as a service needs: single flight per model name (a Redis lock that expires without a
heartbeat), progress that ``rstream train --wait`` can follow, and a recorded outcome.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from rstream.shared.connections import redis_client
from rstream.shared.models.registry import Registry
from rstream.shared.settings import Settings
from rstream.shared.storage import Storage
from rstream.shared.training.config import TrainConfig, check_overrides
from rstream.shared.training.runs import TrainingLock, TrainRuns

logger = logging.getLogger(__name__)


def train_once(settings: Settings, run_id: str, *, name: str | None = None,
               mode: str | None = None, epochs: int | None = None, start: str | None = None,
               force: bool = False, overrides: dict[str, Any] | None = None,
               data: str | None = None, uri_column: str | None = None,
               label_column: str | None = None) -> dict[str, Any]:
    """Fine-tune ``name`` unless another run holds its lock; returns the run's outcome.

    ``data`` replaces RSTREAM_TRAIN_DATA for this run (``rstream train --data``);
    ``uri_column`` and ``label_column`` name a labels table's columns (default uri, label).
    """
    from rstream.worker.finetune.run import run_finetune  # torch: only in the trainer

    name = name or settings.train_model
    client = redis_client(settings.redis_url)
    runs = TrainRuns(client)
    lock = TrainingLock(client, name, settings.train_lock_ttl)
    if not lock.acquire():
        outcome = {"status": "locked", "name": name,
                   "reason": f"another fine-tune of {name} holds the lock {lock.key} (it expires "
                             f"in {lock.expires_in():.0f} s without a heartbeat)"}
        runs.update(run_id, **outcome)
        logger.info("%s", outcome["reason"])
        return outcome
    try:
        if data:
            settings = dataclasses.replace(settings, train_data=data)
        config = TrainConfig(mode=mode or settings.train_mode,
                             epochs=epochs or settings.train_epochs,
                             device=settings.device, precision=settings.precision,
                             **check_overrides(overrides or {}))
        runs.update(run_id, status="training", name=name, config=dataclasses.asdict(config))

        def progress(epoch: int, step: int, loss: float) -> None:
            lock.beat()
            runs.update(run_id, epoch=epoch, step=step, loss=round(float(loss), 5),
                        epochs=config.epochs)
            logger.info("fine-tune %s: epoch %d step %d loss %.4f", name, epoch, step, loss)

        storage = Storage(settings)
        outcome = run_finetune(settings, storage, Registry(storage, settings.models), name,
                               config, start_ref=start, base_ref=settings.train_base or None,
                               progress=progress, force=force,
                               columns=(uri_column or "uri", label_column or "label"))
    except Exception as exc:
        logger.exception("fine-tune of %s failed", name)
        runs.update(run_id, status="failed", name=name,
                    reason=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        lock.release()
    runs.update(run_id, **outcome)
    return outcome
