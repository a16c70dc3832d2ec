"""One chat completion as the API sends it: the engine's stream bridged into the event loop, the
``chat.completion`` body, and the Server-Sent Events of a streamed reply (``chat.completion.chunk``).

``ReplyStream`` runs the backend's stream on a thread of its own (it blocks), so the event loop
keeps serving other requests and ``/health``; a client that goes away cancels its generation.
Streamed chunks carry the thinking in ``reasoning_content``, the answer in ``content`` (each with
its own tokens' ``logprobs`` when asked for), tool calls in ``tool_calls``, then the finish reason
and, with ``stream_options.include_usage``, the usage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError

from ..chat.backend import Backend
from ..chat.events import AnswerDelta, ChatDone, ChatEvent, Loading, ThinkingDelta, ToolCallDelta
from ..errors import ChatbotError
from .api_errors import APIError, ClientDisconnected, api_error_from, shutting_down
from .api_models import ChatCompletionRequest

log = logging.getLogger(__name__)

# How often a request that has not started streaming checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.25
# Events generated but not yet sent: past this many the client is not reading (a stream waits for its
# socket) and the reply is cancelled, so an unread stream holds a bounded amount of memory.
MAX_UNREAD_EVENTS = 4096


_FINISHED = object()


class ReplyStream:
    """Runs ``backend.stream`` on a thread of its own and hands its events to the event loop.

    The engine's iterator blocks (waiting in the queue, then for each token), so it never runs on
    the event loop: other requests and ``/health`` stay responsive. ``cancel()`` stops the
    generation within one model step and frees the model for the next request.
    """

    def __init__(self, backend: Backend, request: ChatCompletionRequest, client: str) -> None:
        self.backend = backend
        self._cancel = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._next_disconnect_check = 0.0
        self._thread = threading.Thread(
            target=self._produce,
            args=(request, client),
            name="api-request",
            daemon=True,
        )
        self._thread.start()

    def _produce(self, body: ChatCompletionRequest, client: str) -> None:
        try:
            # Built here, not on the event loop: a bad request is an error event like any other.
            request = body.chat_request(client, self.backend.limits)
            for event in self.backend.stream(request, self._cancel):
                self._hand_over(event)
        except ChatbotError as exc:
            self._hand_over(exc)
        except Exception as exc:  # any failure must reach the waiting request, or it hangs
            log.exception("Answering an API request failed")
            self._hand_over(exc)
        finally:
            self._hand_over(_FINISHED)

    def _hand_over(self, item: Any) -> None:
        if self._events.qsize() >= MAX_UNREAD_EVENTS and not self._cancel.is_set():
            log.warning("A reply's client left %d pieces unread: generation stopped", MAX_UNREAD_EVENTS)
            self._cancel.set()
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is stopping, nobody is listening
            self._cancel.set()

    def cancel(self) -> None:
        self._cancel.set()

    async def next_event(self, request: Request | None = None) -> ChatEvent:
        """The next event; raises the request's error as an ``APIError``.

        With ``request``, also watches for the client going away (``ClientDisconnected``); while
        streaming, the SSE response watches instead.
        """
        while True:
            if request is None:
                item = await self._events.get()
            else:
                await self._raise_if_disconnected(request)
                try:
                    item = await asyncio.wait_for(self._events.get(), DISCONNECT_POLL_SECONDS)
                except asyncio.TimeoutError:
                    continue
            if item is _FINISHED:
                raise APIError(500, "The reply ended without a result.", type="server_error")
            if isinstance(item, BaseException):
                raise api_error_from(item, self.backend)
            return item

    async def _raise_if_disconnected(self, request: Request) -> None:
        # Checked on a clock, not only when events pause: tokens may arrive without a break.
        now = time.monotonic()
        if now < self._next_disconnect_check:
            return
        self._next_disconnect_check = now + DISCONNECT_POLL_SECONDS
        if await request.is_disconnected():
            raise ClientDisconnected

    async def first_event(self, request: Request) -> ChatEvent:
        """The first event after loading: the request was accepted (queued or generating) or it failed."""
        event = await self.next_event(request)
        while isinstance(event, Loading):
            event = await self.next_event(request)
        return event

    async def result(self, request: Request) -> ChatDone:
        event = await self.first_event(request)
        while not isinstance(event, ChatDone):
            event = await self.next_event(request)
        return event


@dataclass(frozen=True)
class Completion:
    """What every chunk or reply of one request repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> Completion:
        return cls(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model)


def usage(done: ChatDone) -> dict[str, int]:
    prompt, completion = int(done.stats["prompt_tokens"]), int(done.stats["new_tokens"])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(meta: Completion, done: ChatDone) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": done.answer if done.answer or not done.tool_calls else None,
        "refusal": None,
        "reasoning_content": done.thinking or None,
    }
    if done.tool_calls:
        message["tool_calls"] = [call.as_openai() for call in done.tool_calls]
    choice = {"index": 0, "message": message, "finish_reason": done.finish_reason, "logprobs": done.logprobs}
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": usage(done),
    }


def chunk_json(
    meta: Completion,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage_field: dict[str, int] | None = None,
    with_usage: bool = False,
    logprobs: dict[str, Any] | None = None,
) -> str:
    """One ``chat.completion.chunk``; ``delta=None`` makes the usage chunk (no choices)."""
    chunk: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}],
    }
    if with_usage:
        chunk["usage"] = usage_field
    return json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))


async def sse_chunks(reply: ReplyStream, first: ChatEvent, meta: Completion, include_usage: bool) -> AsyncIterator[str]:
    """The ``data:`` payloads of a streamed reply, ending with ``[DONE]``.

    Leaving early (the client disconnected, so the response task is cancelled) cancels the
    generation at once.
    """
    ended = False
    sent_logprobs = 0
    try:
        yield chunk_json(meta, {"role": "assistant", "content": ""}, with_usage=include_usage)
        event = first
        while not isinstance(event, ChatDone):
            if isinstance(event, ThinkingDelta):
                yield chunk_json(meta, {"reasoning_content": event.text}, with_usage=include_usage)
            elif isinstance(event, AnswerDelta):
                # Each chunk carries the log-probabilities of its own tokens, as OpenAI and vLLM send them.
                logprobs = {"content": list(event.logprobs), "refusal": None} if event.logprobs else None
                sent_logprobs += len(event.logprobs)
                yield chunk_json(meta, {"content": event.text}, with_usage=include_usage, logprobs=logprobs)
            elif isinstance(event, ToolCallDelta):
                call = {"index": event.index, **event.call.as_openai()}
                yield chunk_json(meta, {"tool_calls": [call]}, with_usage=include_usage)
            event = await reply.next_event()
        ended = True
        if event.finish_reason == "cancelled":
            raise shutting_down()
        # Tokens whose text went out with no answer piece (a tool call's, say) travel with the last chunk.
        rest = (event.logprobs or {}).get("content", [])[sent_logprobs:]
        logprobs = {"content": rest, "refusal": None} if rest else None
        yield chunk_json(meta, {}, event.finish_reason, with_usage=include_usage, logprobs=logprobs)
        if include_usage:
            yield chunk_json(meta, None, usage_field=usage(event), with_usage=True)
        log_reply(meta, event)
    except APIError as exc:
        ended = True
        # Headers are gone already: the error travels as a data event, which OpenAI clients raise.
        log.warning("%s failed while streaming: %s", meta.id, exc.message)
        yield json.dumps(exc.body(), ensure_ascii=False)
    finally:
        reply.cancel()
        if not ended:
            log.info("%s: the client disconnected mid-stream; generation stopped", meta.id)
    yield "[DONE]"


class ReplyEvents(EventSourceResponse):
    """The SSE response of one streamed reply; its ``send_timeout`` is the write deadline: a client that
    takes no piece for that long has its stream cut (the generation is cancelled as on a disconnect)."""

    def __init__(self, chunks: AsyncIterator[str], meta: Completion, write_seconds: float) -> None:
        super().__init__(chunks, sep="\n", send_timeout=write_seconds)
        self.meta = meta

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            seconds = self.send_timeout
            log.info("%s: the client read nothing for %.0f s; stream cut, generation stopped", self.meta.id, seconds)


def log_reply(meta: Completion, done: ChatDone) -> None:
    stats = done.stats
    log.info(
        "%s: %s prompt + %s completion tokens, finish %s, %.2f s",
        meta.id,
        stats.get("prompt_tokens"),
        stats.get("new_tokens"),
        done.finish_reason,
        stats.get("total_seconds", 0.0),
    )
