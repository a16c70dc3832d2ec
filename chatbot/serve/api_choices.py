"""Several choices for one chat completion (``n`` > 1, at most ``api_models.MAX_CHOICES``).

Each choice is one request to the backend (``ReplyStream``), built from the same body with
``ChatRequest.as_choice``: the seed, when one is given, becomes ``seed + index``, and all the choices
carry one ``SharedPrefill``, so a model loaded here reads the prompt once and samples the choices side
by side in its batch; a remote server (``--backend``) gets one request per choice. Each choice takes a
place in the queue and a running slot, like any request, and every choice must be accepted before the
response starts: a full queue is still a 429, not an error inside a stream.

The reply lists the choices in order (``index``); streamed, each chunk names its choice's ``index``, and
the usage counts the prompt once and the completion tokens of every choice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ..chat.backend import Backend
from ..chat.events import ChatDone, ChatEvent
from ..chat.request import ChatRequest
from ..engine.limits import ReplyLimits
from ..engine.shared_prefill import SharedPrefill
from .api_errors import APIError, shutting_down
from .api_models import ChatCompletionRequest
from .api_stream import (
    ChoiceChunks,
    Completion,
    ReplyEvents,
    ReplyStream,
    chunk_json,
    completion_body,
    log_reply,
    until_accepted,
    usage,
)
from .app_state import App

log = logging.getLogger(__name__)


class ChoiceBody:
    """Choice ``index`` of ``body``, in the shape ``ReplyStream`` builds its request from."""

    def __init__(self, body: ChatCompletionRequest, index: int, shared: SharedPrefill) -> None:
        self.body = body
        self.index = index
        self.shared = shared

    def chat_request(self, client: str, limits: ReplyLimits) -> ChatRequest:
        return self.body.chat_request(client, limits).as_choice(self.index, self.shared)


class Choices:
    """The ``n`` replies of one request, each streaming on its own thread (``ReplyStream``)."""

    def __init__(self, backend: Backend, body: ChatCompletionRequest, client: str) -> None:
        shared = SharedPrefill()
        count = body.n or 1
        self.replies = [ReplyStream(backend, ChoiceBody(body, index, shared), client) for index in range(count)]

    def cancel(self) -> None:
        for reply in self.replies:
            reply.cancel()

    async def first_events(self, request: Request) -> list[ChatEvent]:
        """Every choice's first event: all accepted (queued or generating), or the first one's error."""
        return [await reply.first_event(request) for reply in self.replies]

    async def results(self, request: Request) -> list[ChatDone]:
        return [await reply.result(request) for reply in self.replies]


async def answer_choices(app: App, body: ChatCompletionRequest, request: Request, client: str) -> Any:
    """The response to a chat completion with ``n`` > 1, streamed or not (see the module docstring)."""
    meta = Completion.new(app.model_name)
    choices = Choices(app.backend, body, client)
    if body.stream:
        firsts = await until_accepted(choices.first_events(request), choices.cancel, meta.id)
        if isinstance(firsts, Response):
            return firsts
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return ReplyEvents(
            sse_choices(choices, firsts, meta, include_usage), meta.id, app.settings.stream_write_seconds
        )
    dones = await until_accepted(choices.results(request), choices.cancel, meta.id)
    if isinstance(dones, Response):
        return dones
    if any(done.finish_reason == "cancelled" for done in dones):
        raise shutting_down()
    for done in dones:
        log_reply(meta, done)
    return JSONResponse(completion_body(meta, *dones))


async def sse_choices(
    choices: Choices, firsts: list[ChatEvent], meta: Completion, include_usage: bool
) -> AsyncIterator[str]:
    """The ``data:`` payloads of ``n`` streamed choices, interleaved as their events come, then ``[DONE]``."""
    events: asyncio.Queue[tuple[int, ChatEvent | APIError]] = asyncio.Queue()

    async def pump(index: int, reply: ReplyStream, event: ChatEvent) -> None:
        try:
            while True:
                events.put_nowait((index, event))
                if isinstance(event, ChatDone):
                    return
                event = await reply.next_event()
        except APIError as exc:
            events.put_nowait((index, exc))

    writers = [ChoiceChunks(meta, include_usage, index) for index in range(len(firsts))]
    tasks = [
        asyncio.create_task(pump(index, reply, first))
        for index, (reply, first) in enumerate(zip(choices.replies, firsts, strict=True))
    ]
    dones: dict[int, ChatDone] = {}
    ended = False
    try:
        for writer in writers:
            yield writer.first()
        while len(dones) < len(writers):
            index, item = await events.get()
            if isinstance(item, APIError):
                raise item
            if isinstance(item, ChatDone):
                if item.finish_reason == "cancelled":
                    raise shutting_down()
                dones[index] = item
                yield writers[index].last(item)
            elif (chunk := writers[index].event(item)) is not None:
                yield chunk
        ended = True
        ordered = [dones[index] for index in range(len(writers))]
        if include_usage:
            yield chunk_json(meta, None, usage_field=usage(*ordered), with_usage=True)
        for done in ordered:
            log_reply(meta, done)
    except APIError as exc:
        ended = True
        # Headers are gone already: the error travels as a data event, which OpenAI clients raise.
        log.warning("%s failed while streaming: %s", meta.id, exc.message)
        yield json.dumps(exc.body(), ensure_ascii=False)
    finally:
        choices.cancel()
        for task in tasks:
            task.cancel()
        if not ended:
            log.info("%s: the client disconnected mid-stream; generation stopped", meta.id)
    yield "[DONE]"
