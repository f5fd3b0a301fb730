"""The model and training routes of the HTTP API: the registry, promote, rollback, train."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from rstream.producer import training
from rstream.producer.api.context import ApiContext
from rstream.shared.errors import NotFoundError


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=64)


class TrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=64)
    mode: Literal["feature-extract", "finetune"] | None = None
    epochs: int | None = Field(None, ge=1, le=1000)
    data: str | None = Field(None, max_length=4096)
    uri_column: str | None = Field(None, min_length=1, max_length=256,
                                   description="a labels table's URI column (default uri)")
    label_column: str | None = Field(None, min_length=1, max_length=256,
                                     description="a labels table's label column (default label)")
    start: str | None = Field(None, max_length=512)
    force: bool = False
    preset: str | None = Field(None, max_length=64, description="a named set of options "
                               "(--preset)")
    options: dict[str, Any] | None = Field(None, description="advanced options (--set)")


def add_routes(app: FastAPI, ctx: ApiContext) -> None:
    registry, read, admin = ctx.registry, ctx.need("read"), ctx.need("admin")

    @app.get("/v1/models", tags=["models"], dependencies=[read])
    def list_models() -> dict[str, Any]:
        return {"models": [{"name": name, "production": (registry.read_pointer(name)[0] or {})
                            .get("version")} for name in registry.names()]}

    @app.get("/v1/models/{name}", tags=["models"], dependencies=[read])
    def get_model(name: str) -> dict[str, Any]:
        model = training.model_versions(registry, name)
        if not model["versions"] and model["production"] is None:
            raise NotFoundError(f"model {name!r} has no versions in {ctx.settings.models}")
        return model

    @app.post("/v1/models/{name}/promote", tags=["models"], dependencies=[admin])
    def promote(name: str, body: PromoteBody) -> dict[str, Any]:
        pointer, changed = training.promote(registry, name, body.version)
        return {"name": name, "production": pointer["version"], "changed": changed}

    @app.post("/v1/models/{name}/rollback", tags=["models"], dependencies=[admin])
    def rollback(name: str) -> dict[str, Any]:
        pointer = registry.rollback(name)
        return {"name": name, "production": pointer["version"], "changed": True}

    @app.post("/v1/train", status_code=202, tags=["training"], dependencies=[admin])
    def train(body: TrainBody) -> dict[str, Any]:
        """Send a fine-tune run to the trainer; its run id."""
        options = training.checked_options(
            ctx.settings, name=body.name, mode=body.mode, epochs=body.epochs,
            start=body.start, force=body.force, data=body.data, overrides=body.options,
            preset_name=body.preset, uri_column=body.uri_column,
            label_column=body.label_column)
        run = training.start_run(ctx.client, options)
        return {"run": run, "url": f"/v1/train/{run}"}

    @app.get("/v1/train/{run}", tags=["training"], dependencies=[read])
    def train_state(run: str) -> dict[str, Any]:
        return {"run": run, **training.run_state(ctx.client, run)}
