"""What the Anthropic Messages and OpenAI Responses routes share with chat completions.

Each of those APIs only translates: its request becomes the message list and options of one
``ChatRequest`` (``Translated``), which runs through ``ReplyStream`` exactly as a chat completion does
(the same backend, queue, caps, fair turns and error mapping); the reply's events (``chat/events.py``)
are then turned into that API's body or stream. ``start_reply`` is the part of a route that waits for
the request to be accepted, ``reply_events`` the part of a stream that walks the events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from ..chat.events import ChatDone, ChatEvent, Loading, QueuePosition
from ..chat.request import ChatRequest
from ..engine.limits import ReplyLimits
from ..errors import ChatbotError
from .api_errors import api_error_from, shutting_down
from .api_keys import client_key
from .api_stream import ReplyStream, until_accepted
from .app_state import App

log = logging.getLogger(__name__)

# nginx's "client closed request", as chat completions answer a client that left before its reply.


@dataclass(frozen=True)
class Translated:
    """Another API's request as chat messages and ``ChatRequest.build`` options; built on the request's
    own thread (``ReplyStream``) with the API's rules (``strict_context``: nothing dropped)."""

    messages: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)

    def chat_request(self, client: str, limits: ReplyLimits) -> ChatRequest:
        return ChatRequest.build(self.messages, strict_context=True, client=client, limits=limits, **self.options)


def translate(app: App, build: Any, *args: Any) -> Translated:
    """``build(*args)``, with a ``ChatbotError`` (bad input) raised as the API's 400."""
    try:
        return build(*args)
    except ChatbotError as exc:
        raise api_error_from(exc, app.backend) from exc


async def start_reply(
    app: App, translated: Translated, request: Request, *, stream: bool, name: str
) -> tuple[ReplyStream, ChatEvent] | Response:
    """Queue the request; wait until it is accepted (``stream``: its first event after loading, so that bad
    input or a full queue is still an HTTP error status) or answered (its ``ChatDone``).

    Returns the reply and that event, or the 499 response for a client that went away.
    Raises:
        APIError: the request's error (400, 429, 503...).
    """
    reply = ReplyStream(app.backend, translated, client_key(request))
    event = await until_accepted(reply.first_event(request) if stream else reply.result(request), reply.cancel, name)
    if isinstance(event, Response):
        return event
    if not stream and isinstance(event, ChatDone) and event.finish_reason == "cancelled":
        raise shutting_down()
    return reply, event


async def reply_events(reply: ReplyStream, first: ChatEvent) -> AsyncIterator[ChatEvent]:
    """The reply's content events from ``first`` on, ending with its ``ChatDone`` (queue and loading
    events are left out). Raises the request's ``APIError``; a stop at shutdown is ``shutting_down()``."""
    event = first
    while True:
        if isinstance(event, ChatDone):
            if event.finish_reason == "cancelled":
                raise shutting_down()
            yield event
            return
        if not isinstance(event, Loading | QueuePosition):
            yield event
        event = await reply.next_event()


def stream_response(description: str) -> dict[str, Any]:
    """The OpenAPI description of a 200 that is JSON, or Server-Sent Events with ``stream: true``."""
    event = {
        "type": "object",
        "properties": {
            "event": {"type": "string", "description": "The event's type."},
            "data": {"type": "string", "description": "The event as JSON."},
        },
        "required": ["data"],
    }
    return {"description": description, "content": {"text/event-stream": {"schema": event}}}


def compact(value: Any) -> str:
    """JSON as the streams send it: compact, UTF-8 as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def function_tool(name: Any, description: Any, parameters: Any) -> dict[str, Any]:
    """A function tool as chat completions (and ``ChatRequest``) take it."""
    function: dict[str, Any] = {"name": name}
    if description:
        function["description"] = description
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def log_done(name: str, done: ChatDone) -> None:
    stats = done.stats
    log.info(
        "%s: %s prompt + %s completion tokens, finish %s, %.2f s",
        name,
        stats.get("prompt_tokens"),
        stats.get("new_tokens"),
        done.finish_reason,
        stats.get("total_seconds", 0.0),
    )
