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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fastapi import Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError

from ..chat.backend import Backend
from ..chat.events import AnswerDelta, ChatDone, ChatEvent, Loading, ThinkingDelta, ToolCallDelta
from ..chat.request import ChatRequest
from ..engine.limits import ReplyLimits
from ..errors import ChatbotError
from .api_errors import APIError, ClientDisconnected, api_error_from, shutting_down

log = logging.getLogger(__name__)
T = TypeVar("T")

# How often a request that has not started streaming checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.25
# Events generated but not yet sent: past this many the client is not reading (a stream waits for its
# socket) and the reply is cancelled, so an unread stream holds a bounded amount of memory.
MAX_UNREAD_EVENTS = 4096


_FINISHED = object()


class RequestBody(Protocol):
    """A request of any of the API's families (a chat completion or one choice of it, a translated Messages or
    Responses request): it builds its ``ChatRequest``."""

    def chat_request(self, client: str, limits: ReplyLimits) -> ChatRequest: ...


class ReplyStream:
    """Runs ``backend.stream`` on a thread of its own and hands its events to the event loop.

    The engine's iterator blocks (waiting in the queue, then for each token), so it never runs on
    the event loop: other requests and ``/health`` stay responsive. ``cancel()`` stops the
    generation within one model step and frees the model for the next request.
    """

    def __init__(self, backend: Backend, request: RequestBody, client: str) -> None:
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

    def _produce(self, body: RequestBody, client: str) -> None:
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


CLIENT_CLOSED_STATUS = 499  # nginx's "client closed request": what a client that left before its reply gets


async def until_accepted(waiting: Awaitable[T], cancel: Callable[[], None], name: str) -> T | Response:
    """``waiting`` (a reply's first event or its whole result), or the 499 response when the client went away
    meanwhile; either way out but the answer, the reply is cancelled (``cancel``), so nothing generates for
    nobody."""
    try:
        return await waiting
    except ClientDisconnected:
        cancel()
        log.info("%s: the client disconnected before the reply; generation stopped", name)
        return Response(status_code=CLIENT_CLOSED_STATUS)
    except BaseException:
        cancel()
        raise


@dataclass(frozen=True)
class Completion:
    """What every chunk or reply of one request repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> Completion:
        return cls(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model)


def usage(done: ChatDone, *more: ChatDone) -> dict[str, int]:
    """OpenAI's usage of a reply; for several choices of one prompt, the prompt counts once."""
    prompt = int(done.stats["prompt_tokens"])
    completion = sum(int(each.stats["new_tokens"]) for each in (done, *more))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def choice_body(done: ChatDone, index: int = 0) -> dict[str, Any]:
    """One choice of a ``chat.completion``."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": done.answer if done.answer or not done.tool_calls else None,
        "refusal": None,
        "reasoning_content": done.thinking or None,
    }
    if done.tool_calls:
        message["tool_calls"] = [call.as_openai() for call in done.tool_calls]
    return {
        "index": index,
        "message": message,
        "finish_reason": done.finish_reason,
        "logprobs": done.logprobs,
        "stop_reason": done.stop_sequence,  # vLLM's field: the stop string that ended the reply
    }


def completion_body(meta: Completion, done: ChatDone, *more: ChatDone) -> dict[str, Any]:
    """The ``chat.completion``: one choice per reply given (``n``), in order."""
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [choice_body(each, index) for index, each in enumerate((done, *more))],
        "usage": usage(done, *more),
    }


def chunk_json(
    meta: Completion,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage_field: dict[str, int] | None = None,
    with_usage: bool = False,
    logprobs: dict[str, Any] | None = None,
    index: int = 0,
    stop_reason: str | None = None,
) -> str:
    """One ``chat.completion.chunk`` of choice ``index``; ``delta=None`` makes the usage chunk (no choices)."""
    chunk: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": []
        if delta is None
        else [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}],
    }
    if stop_reason is not None:
        chunk["choices"][0]["stop_reason"] = stop_reason  # vLLM's field, on the finish chunk
    if with_usage:
        chunk["usage"] = usage_field
    return json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))


class ChoiceChunks:
    """The chunks of one choice (``index``) of a streamed reply, event by event."""

    def __init__(self, meta: Completion, include_usage: bool, index: int = 0) -> None:
        self.meta = meta
        self.include_usage = include_usage
        self.index = index
        self.sent_logprobs = 0

    def chunk(self, delta: dict[str, Any] | None, finish_reason: str | None = None, **fields: Any) -> str:
        return chunk_json(self.meta, delta, finish_reason, with_usage=self.include_usage, index=self.index, **fields)

    def first(self) -> str:
        return self.chunk({"role": "assistant", "content": ""})

    def event(self, event: ChatEvent) -> str | None:
        """The chunk of a thinking, answer or tool call event (None for the others)."""
        if isinstance(event, ThinkingDelta):
            return self.chunk({"reasoning_content": event.text})
        if isinstance(event, AnswerDelta):
            # Each chunk carries the log-probabilities of its own tokens, as OpenAI and vLLM send them.
            logprobs = {"content": list(event.logprobs), "refusal": None} if event.logprobs else None
            self.sent_logprobs += len(event.logprobs)
            return self.chunk({"content": event.text}, logprobs=logprobs)
        if isinstance(event, ToolCallDelta):
            return self.chunk({"tool_calls": [{"index": event.index, **event.call.as_openai()}]})
        return None

    def last(self, done: ChatDone) -> str:
        """The finish chunk; tokens whose text went out with no answer piece (a tool call's, say) travel with it."""
        rest = (done.logprobs or {}).get("content", [])[self.sent_logprobs :]
        logprobs = {"content": rest, "refusal": None} if rest else None
        return self.chunk({}, done.finish_reason, logprobs=logprobs, stop_reason=done.stop_sequence)


async def sse_chunks(reply: ReplyStream, first: ChatEvent, meta: Completion, include_usage: bool) -> AsyncIterator[str]:
    """The ``data:`` payloads of a streamed reply, ending with ``[DONE]``.

    Leaving early (the client disconnected, so the response task is cancelled) cancels the
    generation at once.
    """
    ended = False
    chunks = ChoiceChunks(meta, include_usage)
    try:
        yield chunks.first()
        event = first
        while not isinstance(event, ChatDone):
            if (chunk := chunks.event(event)) is not None:
                yield chunk
            event = await reply.next_event()
        ended = True
        if event.finish_reason == "cancelled":
            raise shutting_down()
        yield chunks.last(event)
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
    """The SSE response of one streamed reply (any of the APIs); its ``send_timeout`` is the write deadline:
    a client that takes no piece for that long has its stream cut (the generation is cancelled as on a
    disconnect: the cut closes the events' generator, which cancels its reply)."""

    def __init__(self, events: AsyncIterator[Any], name: str, write_seconds: float) -> None:
        super().__init__(events, sep="\n", send_timeout=write_seconds)
        self.name = name

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            seconds = self.send_timeout
            log.info("%s: the client read nothing for %.0f s; stream cut, generation stopped", self.name, seconds)


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
