"""The API's information routes: ``/v1/models`` (the served name), ``/v1/models/{name}`` and ``/health``
(status, precision, memory, queue), each answering ``HEAD`` as well as ``GET``."""

from __future__ import annotations

import time
from typing import Any

import psutil
import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from .api_errors import ERROR_RESPONSES, APIError
from .api_keys import has_key
from .api_models import ErrorResponse, Health, ModelCard, ModelList
from .app_state import App


def health_body(app: App) -> dict[str, Any]:
    """``/health``: the backend's status (``Backend.status()``), the process's memory, the served name."""
    status = app.backend.status()
    cuda = status.device is not None and status.device.type == "cuda" and torch.cuda.is_available()
    body = {
        "status": {"ready": "ready", "failed": "failed"}.get(status.state, "loading"),
        "model": app.model_name,
        # A remote server's precision is not decided here: the operator's statement is in backend.precision.
        "precision": status.precision.to_dict() if status.precision is not None else None,
        "memory": {
            "weights_bytes": status.weights_bytes,
            "process_rss_bytes": psutil.Process().memory_info().rss,
            "cuda_allocated_bytes": torch.cuda.memory_allocated(status.device) if cuda else None,
            "cuda_reserved_bytes": torch.cuda.memory_reserved(status.device) if cuda else None,
        },
        "queue": {**status.queue, "depth": status.queue.get("waiting", 0)},
        "load": {"stage": status.stage, "fraction": status.fraction},
        "error": status.error,
    }
    if status.remote is not None:
        body["backend"] = status.remote.to_dict()
    return body


def model_card(name: str, created: int, max_model_len: int | None = None) -> dict[str, Any]:
    """One model as vLLM lists it: ``max_model_len`` is the context window (null until it is known)."""
    return {"id": name, "object": "model", "created": created, "owned_by": "qwen3-chat", "max_model_len": max_model_len}


def context_window(app: App) -> int | None:
    """The loaded model's context, or the one a remote server reported."""
    return app.backend.context_window()


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
