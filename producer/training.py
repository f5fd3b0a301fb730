"""Sending fine-tune runs and reading the registry, for the CLI and the HTTP API alike.

No torch: a run is sent by name to the trainer (``rstream worker --train``); every option is
checked here first, so a mistake is one clear error now rather than a traceback in the
trainer's log.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any

from rstream.producer.client import Client
from rstream.shared.constants import FINETUNE_TASK, TRAIN_QUEUE
from rstream.shared.errors import NotFoundError
from rstream.shared.models import refs
from rstream.shared.models.registry import Registry
from rstream.shared.names import MODEL_NAME
from rstream.shared.settings import Settings
from rstream.shared.tables.reader import Table
from rstream.shared.training.config import TrainConfig, check_overrides, preset
from rstream.shared.training.runs import TrainRuns


def checked_options(settings: Settings, *, name: str | None = None, mode: str | None = None,
                    epochs: int | None = None, start: str | None = None, force: bool = False,
                    data: str | None = None, overrides: Mapping[str, Any] | None = None,
                    preset_name: str | None = None, uri_column: str | None = None,
                    label_column: str | None = None) -> dict[str, Any]:
    """The options of one run, each checked; what the ``finetune`` task receives. A preset
    gives defaults that ``mode``, ``epochs`` and ``overrides`` win over. ``uri_column`` and
    ``label_column`` name the columns of a labels table given as ``data``."""
    chosen = preset(preset_name) if preset_name else {}
    preset_mode, preset_epochs = chosen.pop("mode", None), chosen.pop("epochs", None)
    mode, epochs = mode or preset_mode, epochs or preset_epochs
    overrides = check_overrides({**chosen, **(overrides or {})})
    TrainConfig(mode=mode or settings.train_mode, epochs=epochs or settings.train_epochs,
                **overrides)
    if name:
        MODEL_NAME.check(name)
    if start:
        refs.parse(start)
    if data:
        dataclasses.replace(settings, train_data=data)  # the setting's own checks
    if uri_column or label_column:
        Table(uri_column=uri_column or "uri", keep=(label_column or "label",))  # ConfigError
    options = {"name": name, "mode": mode, "epochs": epochs, "start": start,
               "force": force or None, "data": data, "overrides": overrides or None,
               "uri_column": uri_column, "label_column": label_column}
    return {key: value for key, value in options.items() if value is not None}


def start_run(client: Client, options: dict[str, Any]) -> str:
    """Send one fine-tune run; its id, which ``run_state`` follows."""
    run = f"train-{uuid.uuid4().hex[:12]}"
    TrainRuns(client.jobs.redis).update(
        run, status="queued", name=options.get("name", client.settings.train_model))
    client.app.send_task(FINETUNE_TASK, kwargs=options, queue=TRAIN_QUEUE, task_id=run)
    return run


def run_state(client: Client, run: str) -> dict[str, Any]:
    """What is known of run ``run``; NotFoundError when nothing is."""
    state = TrainRuns(client.jobs.redis).get(run)
    if not state:
        raise NotFoundError(f"fine-tune run {run} not found (unknown, or older than 7 days)")
    return state


def model_versions(registry: Registry, name: str) -> dict[str, Any]:
    """A model's production version and its versions, newest last, with their accuracy."""
    pointer, _ = registry.read_pointer(name)
    versions = []
    for version in registry.versions(name):
        meta = registry.read_meta(name, version)
        versions.append({
            "version": version, "arch": meta.get("arch"),
            "classes": len(meta.get("classes", [])), "created_at": meta.get("created_at"),
            "val_accuracy": meta.get("metrics", {}).get("val_accuracy"),
            "gate": meta.get("gate", {}).get("reason")
            or meta.get("imported", {}).get("reason", ""),
            "run": _run_of(meta)})
    return {"name": name, "production": pointer["version"] if pointer else None,
            "promoted_at": pointer.get("promoted_at") if pointer else None,
            "previous": pointer.get("previous", []) if pointer else [],
            "events": pointer.get("events", []) if pointer else [], "versions": versions}


def _run_of(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The fine-tune run that made a version (None for an imported one): its options, the
    figures of each epoch, the epoch chosen, the gate with both figures, the confusion
    matrix of the validation split, and the per-class counts of the production version it
    was gated against on that same split (None when there was none)."""
    training, metrics, gate = meta.get("training"), meta.get("metrics", {}), meta.get("gate", {})
    if not training:
        return None
    return {"options": training.get("config", {}), "history": training.get("history", []),
            "best_epoch": training.get("best_epoch"), "parent": meta.get("parent"),
            "gate": {k: gate.get(k) for k in ("passed", "promoted", "reason", "tolerance",
                                              "production_version", "production_accuracy")},
            "val_accuracy": metrics.get("val_accuracy"),
            "classes": metrics.get("classes", meta.get("classes", [])),
            "confusion": metrics.get("confusion"), "per_class": metrics.get("per_class"),
            "production_per_class": (gate.get("production_eval") or {}).get("per_class")}


def promote(registry: Registry, name: str, version: str) -> tuple[dict[str, Any], bool]:
    """Make ``version`` production; (pointer, whether anything changed)."""
    current = registry.read_pointer(name)  # the compare-and-set is against this very read
    pointer = registry.promote(name, version, reason="promoted by hand", current=current)
    return pointer, not (current[0] and current[0]["version"] == version)
