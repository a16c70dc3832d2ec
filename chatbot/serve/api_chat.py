"""The API's completion routes: ``POST /v1/chat/completions`` (streaming or not) and the legacy
``POST /v1/completions``, answered with a 404 that says what to use instead."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .api_choices import answer_choices
from .api_errors import ERROR_RESPONSES, APIError, shutting_down
from .api_keys import client_key
from .api_models import ChatCompletion, ChatCompletionRequest, ErrorResponse
from .api_stream import (
    Completion,
    ReplyEvents,
    ReplyStream,
    completion_body,
    log_reply,
    sse_chunks,
    until_accepted,
)
from .app_state import App

log = logging.getLogger(__name__)

# nginx's "client closed request": nobody reads it, but the access log says what happened.
STREAM_RESPONSE = {
    "description": "With stream false: a chat.completion. With stream true: Server-Sent Events, one "
    "chat.completion.chunk per data line, then data: [DONE].",
    "content": {
        "text/event-stream": {
            # One schema per event, as OpenAPI 3.2 describes event streams.
            "schema": {
                "type": "object",
                "properties": {
                    "data": {
                        "type": "string",
                        "description": "A chat.completion.chunk as JSON (or an error object), then [DONE].",
                    }
                },
                "required": ["data"],
            }
        }
    },
}


def add_completion_routes(app: App, v1: APIRouter) -> None:
    """Add the completion routes to ``v1`` (the ``/v1`` router), answering from ``app.backend``."""

    @v1.post(
        "/chat/completions",
        response_model=ChatCompletion,
        responses={200: STREAM_RESPONSE, **ERROR_RESPONSES},
        summary="Chat completion, streaming or not",
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        if (body.n or 1) > 1:
            return await answer_choices(app, body, request, client_key(request))
        meta = Completion.new(app.model_name)
        reply = ReplyStream(app.backend, body, client_key(request))
        if body.stream:
            # Wait until the request is accepted, so that bad input or a full queue is still an
            # HTTP error status rather than an error inside a 200 stream.
            first = await until_accepted(reply.first_event(request), reply.cancel, meta.id)
            if isinstance(first, Response):
                return first
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            # A client that stops reading holds the reply's memory and its batch slot: after
            # --stream-write-seconds without taking the next piece, the stream is cut and the generation cancelled.
            chunks = sse_chunks(reply, first, meta, include_usage)
            return ReplyEvents(chunks, meta.id, app.settings.stream_write_seconds)
        done = await until_accepted(reply.result(request), reply.cancel, meta.id)
        if isinstance(done, Response):
            return done
        if done.finish_reason == "cancelled":
            raise shutting_down()
        log_reply(meta, done)
        return JSONResponse(completion_body(meta, done))

    @v1.post("/completions", status_code=404, responses={404: {"model": ErrorResponse}}, summary="Not served")
    async def completions() -> None:
        raise APIError(
            404,
            "The legacy text completion endpoint /v1/completions is not served: this model is a chat model. "
            "Use POST /v1/chat/completions with the text as a user message.",
            code="unsupported_endpoint",
        )
