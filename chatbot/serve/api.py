"""The OpenAI-compatible API: ``POST /v1/chat/completions``, ``GET /v1/models`` and ``GET /health``.

Tools (Qwen3's own format, as vLLM serves it), structured output (``response_format``, enforced by
constrained decoding), ``logprobs`` / ``top_logprobs`` and ``logit_bias`` follow OpenAI's spec;
``HEAD`` answers wherever ``GET`` does. ``/v1/completions`` (legacy text completion) is not
served: a 404 says to use ``/v1/chat/completions``.

A thin layer over the backend the web UI uses: every request is a ``ChatRequest`` for ``backend.stream``
and waits in the same first-come, first-served queue. ``python app.py`` serves it on
``--api-port`` (8000; 0 turns it off) beside the web UI; ``--api-key`` makes it require
``Authorization: Bearer KEY``. The schema of every field is at ``/docs``.

    curl http://127.0.0.1:8000/v1/chat/completions -H "Content-Type: application/json" \\
      -d '{"model": "qwen3", "messages": [{"role": "user", "content": "Hello"}]}'

Thinking is off by default; ``"chat_template_kwargs": {"enable_thinking": true}`` (or a top-level
``"enable_thinking": true``) turns it on, and the thinking arrives in ``reasoning_content`` beside
the answer in ``content``, as vLLM and SGLang do.

This module makes the application; the routes, the streaming, the errors and the key check live in
``api_chat``, ``api_info``, ``api_stream``, ``api_errors`` and ``api_keys``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI

from .api_chat import add_completion_routes
from .api_errors import install_error_handlers
from .api_info import add_info_routes
from .api_keys import api_key_guard
from .api_messages import AnthropicErrors, add_messages_routes
from .api_metrics import add_metrics
from .api_responses import add_responses_routes
from .app_state import App
from .security import install_api_guards


def build_api(app: App) -> FastAPI:
    """The API's FastAPI application, answering from ``app.backend`` under ``app.model_name``."""
    keyed = app.settings.api_key is not None
    api = FastAPI(
        title="Qwen3 Chat API",
        description="OpenAI-compatible chat completions over the same model and queue as the web UI.",
        version="1.0",
        # With a key, the schema is served below to key holders only, and there is no docs page (a
        # browser cannot send the key for the schema it loads).
        openapi_url=None if keyed else "/openapi.json",
        docs_url=None if keyed else "/docs",
        redoc_url=None if keyed else "/redoc",
    )
    install_error_handlers(api)
    install_api_guards(api, app.settings)
    api.add_middleware(AnthropicErrors)  # outermost: the guards' refusals under /v1/messages take its shape too
    guard = [Depends(api_key_guard(app.settings.api_key))] if app.settings.api_key is not None else []
    v1 = APIRouter(prefix="/v1", dependencies=guard)
    add_completion_routes(app, v1)
    add_messages_routes(app, v1)
    add_responses_routes(app, v1)
    add_info_routes(app, api, v1)
    add_metrics(app, api, guard)

    if keyed:

        @api.get("/openapi.json", include_in_schema=False, dependencies=guard)
        def keyed_schema() -> dict[str, Any]:
            return api.openapi()

    api.include_router(v1)
    drop_unused_422(api)
    return api


def drop_unused_422(api: FastAPI) -> None:
    """Leave FastAPI's automatic 422 out of the schema: invalid requests get a 400 with an OpenAI body."""
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        return schema

    api.openapi = openapi  # type: ignore[method-assign]
