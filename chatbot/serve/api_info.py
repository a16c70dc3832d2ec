"""The API's information routes: ``/v1/models`` (the served name), ``/v1/models/{name}`` and ``/health``
(status, precision, memory, queue), each answering ``HEAD`` as well as ``GET``."""

from __future__ import annotations

import time
from typing import Any

import psutil
import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from ..chat.remote import RemoteBackend
from .api_errors import ERROR_RESPONSES, APIError, one_line
from .api_keys import has_key
from .api_models import ErrorResponse, Health, ModelCard, ModelList
from .app_state import App
from .remote_view import remote_health


def health_body(app: App) -> dict[str, Any]:
    engine = app.engine
    if isinstance(engine, RemoteBackend):
        return remote_health(app, engine)
    loaded = engine.loaded
    status = {"ready": "ready", "failed": "failed"}.get(engine.status, "loading")
    stage, fraction = engine.progress.snapshot()
    cuda = loaded is not None and loaded.device.type == "cuda" and torch.cuda.is_available()
    queue = engine.occupancy()
    return {
        "status": status,
        "model": app.model_name,
        "precision": loaded.precision.to_dict() if loaded else None,
        "memory": {
            "weights_bytes": loaded.weights_bytes if loaded else None,
            "process_rss_bytes": psutil.Process().memory_info().rss,
            "cuda_allocated_bytes": torch.cuda.memory_allocated(loaded.device) if cuda else None,
            "cuda_reserved_bytes": torch.cuda.memory_reserved(loaded.device) if cuda else None,
        },
        "queue": {**queue, "depth": queue["waiting"], "size": engine.queue_size, "busy": engine.busy},
        "load": {"stage": stage, "fraction": round(fraction, 3)},
        "error": one_line(engine.load_error) if engine.load_error is not None else None,
    }


def model_card(name: str, created: int, max_model_len: int | None = None) -> dict[str, Any]:
    """One model as vLLM lists it: ``max_model_len`` is the context window (null until it is known)."""
    return {"id": name, "object": "model", "created": created, "owned_by": "qwen3-chat", "max_model_len": max_model_len}


def context_window(app: App) -> int | None:
    """The loaded model's context, or the one a remote server reported."""
    if isinstance(app.engine, RemoteBackend):
        return app.engine.info().max_model_len
    return app.engine.loaded.max_context if app.engine.loaded is not None else None


def add_info_routes(app: App, api: FastAPI, v1: APIRouter) -> None:
    """Add ``/v1/models`` routes to ``v1`` (behind the key, if any) and ``/health`` to ``api``."""
    started = int(time.time())

    @v1.api_route(
        "/models",
        methods=["GET", "HEAD"],
        response_model=ModelList,
        responses={401: ERROR_RESPONSES[401]},
        summary="The served model",
    )
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(app.model_name, started, context_window(app))]}

    @v1.api_route(
        "/models/{model_id:path}",
        methods=["GET", "HEAD"],
        response_model=ModelCard,
        responses={401: ERROR_RESPONSES[401], 404: {"model": ErrorResponse}},
        summary="One model, by its served name",
    )
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != app.model_name:
            raise APIError(
                404,
                f"Model {model_id!r} is not served here; this server has {app.model_name!r}.",
                code="model_not_found",
            )
        return model_card(app.model_name, started, context_window(app))

    @api.api_route(
        "/health",
        methods=["GET", "HEAD"],
        response_model=Health,
        responses={503: {"model": Health}},
        summary="Status and resources",
    )
    def health(request: Request) -> JSONResponse:
        body = health_body(app)
        status = 503 if body["status"] == "failed" else 200
        if app.settings.api_key is not None and not has_key(request, app.settings.api_key):
            # Without the key: only whether it serves; the model, its path, memory and errors need the key.
            return JSONResponse({"status": body["status"]}, status_code=status)
        return JSONResponse(body, status_code=status)
