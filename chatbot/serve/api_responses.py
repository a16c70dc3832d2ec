"""OpenAI's Responses API: ``POST /v1/responses``, streaming or not.

A translation, not a second pipeline: ``instructions`` and the ``input`` items (messages,
``function_call`` and ``function_call_output`` items; ``reasoning`` items are dropped, as earlier
thinking is) become one ``ChatRequest`` that runs through the same backend, queue, caps and key check
as a chat completion. ``reasoning.effort`` medium or high turns Qwen3's thinking on (none, minimal,
low or no ``reasoning`` leave it off), function ``tools`` and ``tool_choice`` map onto chat
completions' tools, ``text.format`` onto ``response_format``. The reply comes back as ``reasoning``,
``message`` and ``function_call`` output items, or as the Responses event stream (``response.created``,
``response.output_item.added``, ``response.reasoning_text.delta``, ``response.output_text.delta``,
``response.function_call_arguments.delta``, ... ``response.completed``).

``previous_response_id`` continues a reply this server kept (``ResponseStore``: at most
``--responses-store`` replies, 256 by default, and ``STORE_BYTES`` of conversation in all, oldest
dropped first, in memory only, each readable by the client that made it); 0 turns it off, and a
request naming one then gets a 400.

    curl http://127.0.0.1:8000/v1/responses -H "Content-Type: application/json" \\
      -d '{"model": "qwen3", "input": "Hello"}'
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from ..chat.events import AnswerDelta, ChatDone, ThinkingDelta, ToolCallDelta
from ..chat.tools import ToolCall, json_size
from ..errors import InvalidRequestError
from .api_errors import ERROR_RESPONSES, APIError
from .api_keys import client_key
from .api_models import sampling_field
from .api_replies import Translated, compact, function_tool, log_done, reply_events, start_reply, translate
from .api_stream import ReplyStream
from .app_state import App

log = logging.getLogger(__name__)

THINKING_EFFORTS = ("medium", "high", "xhigh")
STORE_BYTES = 64 * 2**20  # conversation kept for previous_response_id, all replies together
TEXT_PARTS = ("input_text", "output_text", "text")


# --- requests -------------------------------------------------------------------------------------------------


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = Field(
        None, description="medium, high or xhigh: Qwen3 thinks first; none, minimal or low: it answers at once."
    )


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: dict[str, Any] | None = Field(None, description="text, json_object or json_schema (name, schema).")


class ResponsesRequest(BaseModel):
    """POST /v1/responses. Unknown fields clients commonly send (include, truncation, user...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Accepted for compatibility; the one loaded model answers.")
    input: str | list[dict[str, Any]] = Field(description="Text, or items: messages, function_call(_output).")
    instructions: str | None = Field(None, description="A system message first (not carried to later replies).")
    max_output_tokens: int | None = sampling_field("max_new_tokens", "Most tokens to generate, thinking included.")
    temperature: float | None = sampling_field("temperature")
    top_p: float | None = sampling_field("top_p")
    reasoning: ReasoningConfig | None = None
    tools: list[dict[str, Any]] | None = Field(None, description="Function tools only.")
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    previous_response_id: str | None = Field(None, description="Continue a reply this server kept.")
    store: bool | None = Field(True, description="Keep this reply for previous_response_id (default true).")
    stream: bool | None = False
    metadata: dict[str, str] | None = None
    background: bool | None = Field(None, description="Refused when true: replies are answered while you wait.")
    conversation: Any = Field(None, description="Refused: use previous_response_id or send the items.")


# --- translation ------------------------------------------------------------------------------------------------


def text_of(content: Any, where: str) -> str:
    """A content given as text or as text parts; other parts (images, files) are refused."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError(f"{where} must be text or a list of text parts", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise InvalidRequestError(
                f"{where}[{j}] is a {kind!r} part; this model reads text only (input_text, output_text)",
                param=f"{where}[{j}]",
            )
        texts.append(part["text"])
    return "".join(texts)


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``input`` as chat messages: function calls join the assistant turn, outputs become tool messages.

    Raises:
        InvalidRequestError: an item this server does not read (item_reference, images, built-in tools' calls).
    """
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind, where = item.get("type", "message"), f"input[{i}]"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequestError(
                    f"{where}.role is {role!r}; use user, assistant, system or developer", param=f"{where}.role"
                )
            messages.append({"role": role, "content": text_of(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            if not isinstance(item.get("name"), str) or not isinstance(item.get("arguments", "{}"), str):
                raise InvalidRequestError(f"{where}: a function_call needs a name and arguments text", param=where)
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item["name"], "arguments": item.get("arguments", "{}")},
            }
            if not messages or messages[-1]["role"] != "assistant":
                messages.append({"role": "assistant", "content": ""})
            messages[-1].setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            output = text_of(item.get("output", ""), f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": output})
        elif kind == "reasoning":
            continue  # earlier thinking is not re-sent to Qwen3
        else:
            raise InvalidRequestError(
                f"{where} is an item of type {kind!r}, which this server does not read; send message, "
                "function_call and function_call_output items",
                param=f"{where}.type",
            )
    return messages


def chat_tools(body: ResponsesRequest) -> tuple[list[dict[str, Any]] | None, Any]:
    """(tools, tool_choice) as chat completions take them."""
    tools = None
    if body.tools:
        tools = []
        for i, tool in enumerate(body.tools):
            if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
                raise InvalidRequestError(
                    f"tools[{i}] is a {tool.get('type')!r} tool; this server runs function tools only "
                    '({"type": "function", "name": ..., "parameters": {...}})',
                    param=f"tools[{i}].type",
                )
            tools.append(function_tool(tool["name"], tool.get("description"), tool.get("parameters")))
    choice = body.tool_choice
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise InvalidRequestError(
                'tool_choice must be none, auto, required or {"type": "function", "name": ...}', param="tool_choice"
            )
        choice = {"type": "function", "function": {"name": choice["name"]}}
    return tools, choice


def response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    """``text.format`` as chat completions' ``response_format``."""
    spec = body.text.format if body.text is not None else None
    if not spec or spec.get("type") == "text":
        return None
    if spec.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": spec.get("name"), "schema": spec.get("schema")}}
    return spec  # json_object, or a type ChatRequest refuses with its own words


def thinking(body: ResponsesRequest) -> bool:
    return body.reasoning is not None and body.reasoning.effort in THINKING_EFFORTS


def translated(body: ResponsesRequest, history: list[dict[str, Any]]) -> Translated:
    """``instructions`` and ``history`` (the kept conversation and this input) as one chat request."""
    if body.background:
        raise InvalidRequestError("background replies are not served; leave background out", param="background")
    if body.conversation is not None:
        raise InvalidRequestError(
            "conversations are not served; use previous_response_id or send the items", param="conversation"
        )
    tools, tool_choice = chat_tools(body)
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []
    return Translated(
        system + history,
        {
            "enable_thinking": thinking(body),
            "tools": tools,
            "tool_choice": tool_choice,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "response_format": response_format(body),
            "temperature": body.temperature,
            "top_p": body.top_p,
            "max_new_tokens": body.max_output_tokens,
        },
    )


class ResponseStore:
    """The conversations behind replies kept for ``previous_response_id``: at most ``capacity`` replies and
    ``max_bytes`` of messages (as JSON) in all, the oldest dropped first; each is found only by the client
    that made it. Thread-safe."""

    def __init__(self, capacity: int, max_bytes: int = STORE_BYTES) -> None:
        self.capacity, self.max_bytes = capacity, max_bytes
        self._items: OrderedDict[str, tuple[str, list[dict[str, Any]], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, response_id: str, client: str, messages: list[dict[str, Any]]) -> None:
        size = json_size(messages)
        if self.capacity == 0 or size > self.max_bytes:
            return
        with self._lock:
            self._items[response_id] = (client, messages, size)
            self._bytes += size
            while len(self._items) > self.capacity or self._bytes > self.max_bytes:
                _, (_, _, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def get(self, response_id: str, client: str) -> list[dict[str, Any]] | None:
        with self._lock:
            item = self._items.get(response_id)
        return list(item[1]) if item is not None and item[0] == client else None


def history_of(store: ResponseStore, body: ResponsesRequest, client: str) -> list[dict[str, Any]]:
    """The kept conversation of ``previous_response_id`` (empty without one) and this request's input."""
    previous: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        if store.capacity == 0:
            raise APIError(
                400,
                "previous_response_id is off on this server (--responses-store 0): send the whole conversation "
                "as input items instead.",
                param="previous_response_id",
            )
        kept = store.get(body.previous_response_id, client)
        if kept is None:
            raise APIError(
                400,
                f"previous_response_id {body.previous_response_id!r} is not kept on this server: it never existed, "
                f"was made by another client, was stored with store: false, or was dropped (the server keeps the "
                f"latest {store.capacity} replies, in memory only). Send the whole conversation as input items.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        previous = kept
    try:
        return previous + input_messages(body.input)
    except InvalidRequestError as exc:
        raise APIError(400, str(exc).replace("\nFix: ", " Fix: "), param=exc.param) from exc


# --- replies ----------------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if status == "completed" else []
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [text_part(text)] if status == "completed" else []
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def call_item(item_id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    arguments = call.arguments if status == "completed" else ""
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": arguments,
        "status": status,
    }


def output_items(done: ChatDone) -> list[dict[str, Any]]:
    items = [reasoning_item(new_id("rs"), done.thinking)] if done.thinking else []
    if done.answer or not done.tool_calls:
        items.append(message_item(new_id("msg"), done.answer))
    items.extend(call_item(new_id("fc"), call) for call in done.tool_calls)
    return items


def usage(done: ChatDone) -> dict[str, Any]:
    prompt, generated = int(done.stats.get("prompt_tokens", 0)), int(done.stats.get("new_tokens", 0))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": int(done.stats.get("cached_prompt_tokens", 0)),
            "cache_write_tokens": 0,
        },
        "output_tokens": generated,
        "output_tokens_details": {"reasoning_tokens": 0},  # not counted apart from the answer
        "total_tokens": prompt + generated,
    }


def response_body(
    response_id: str, created: int, model: str, body: ResponsesRequest, *, status: str = "in_progress", **fields: Any
) -> dict[str, Any]:
    """The ``response`` object (no ``usage`` until it is done); ``fields`` (output, usage...) complete it."""
    tools = [
        {
            "type": "function",
            "name": tool["name"],
            "description": tool.get("description"),
            "parameters": tool.get("parameters"),
            "strict": bool(tool.get("strict")),
        }
        for tool in body.tools or []
    ]
    effort = body.reasoning.effort if body.reasoning is not None else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": effort, "summary": None},
        "store": body.store is not False,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "text": {"format": (body.text.format if body.text is not None else None) or {"type": "text"}},
        "tool_choice": body.tool_choice or "auto",
        "tools": tools,
        "truncation": "disabled",
        "metadata": body.metadata or {},
        **fields,
    }


def finished_fields(done: ChatDone, output: list[dict[str, Any]]) -> dict[str, Any]:
    cut = done.finish_reason == "length"
    return {
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "output": output,
        "usage": usage(done),
    }


def sse(data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=compact(data), event=data["type"])


async def response_events(
    reply: ReplyStream, first: Any, start: dict[str, Any], on_done: Any
) -> AsyncIterator[ServerSentEvent]:
    """The Responses event stream of one reply, from the in-progress ``start`` body; ``on_done(done)``
    keeps the finished reply. An error after the headers is an ``error`` event, then ``response.failed``."""
    sequence = 0
    output: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None  # the open reasoning or message item, with its text so far

    def event(kind: str, **fields: Any) -> ServerSentEvent:
        nonlocal sequence
        sequence += 1
        return sse({"type": kind, "sequence_number": sequence - 1, **fields})

    def item_fields(extra: dict[str, Any] | None = None) -> dict[str, Any]:
        assert current is not None
        return {"item_id": current["id"], "output_index": len(output), **(extra or {})}

    def open_item(kind: str) -> list[ServerSentEvent]:
        nonlocal current
        current = {"id": new_id("rs" if kind == "reasoning" else "msg"), "kind": kind, "text": ""}
        if kind == "reasoning":
            item, part = reasoning_item(current["id"], "", "in_progress"), {"type": "reasoning_text", "text": ""}
        else:
            item, part = message_item(current["id"], "", "in_progress"), text_part("")
        return [
            event("response.output_item.added", output_index=len(output), item=item),
            event("response.content_part.added", **item_fields({"content_index": 0, "part": part})),
        ]

    def close_item() -> list[ServerSentEvent]:
        nonlocal current
        if current is None:
            return []
        text, index = current["text"], {"content_index": 0}
        if current["kind"] == "reasoning":
            item, part = reasoning_item(current["id"], text), {"type": "reasoning_text", "text": text}
            done = event("response.reasoning_text.done", **item_fields({**index, "text": text}))
        else:
            item, part = message_item(current["id"], text), text_part(text)
            done = event("response.output_text.done", **item_fields({**index, "text": text, "logprobs": []}))
        events = [
            done,
            event("response.content_part.done", **item_fields({**index, "part": part})),
            event("response.output_item.done", output_index=len(output), item=item),
        ]
        output.append(item)
        current = None
        return events

    try:
        yield event("response.created", response=start)
        yield event("response.in_progress", response=start)
        async for reply_event in reply_events(reply, first):
            if isinstance(reply_event, ThinkingDelta | AnswerDelta):
                kind = "reasoning" if isinstance(reply_event, ThinkingDelta) else "message"
                if current is None or current["kind"] != kind:
                    for item_event in [*close_item(), *open_item(kind)]:
                        yield item_event
                assert current is not None
                current["text"] += reply_event.text
                if kind == "reasoning":
                    yield event(
                        "response.reasoning_text.delta", **item_fields({"content_index": 0, "delta": reply_event.text})
                    )
                else:
                    fields = {"content_index": 0, "delta": reply_event.text, "logprobs": []}
                    yield event("response.output_text.delta", **item_fields(fields))
            elif isinstance(reply_event, ToolCallDelta):
                for item_event in close_item():
                    yield item_event
                call, item_id, index = reply_event.call, new_id("fc"), len(output)
                yield event(
                    "response.output_item.added", output_index=index, item=call_item(item_id, call, "in_progress")
                )
                where = {"item_id": item_id, "output_index": index}
                yield event("response.function_call_arguments.delta", **where, delta=call.arguments)
                yield event("response.function_call_arguments.done", **where, name=call.name, arguments=call.arguments)
                output.append(call_item(item_id, call))
                yield event("response.output_item.done", output_index=index, item=output[-1])
            elif isinstance(reply_event, ChatDone):
                for item_event in close_item():
                    yield item_event
                if not output:  # nothing was said: one empty message, as the body without streaming has
                    for item_event in [*open_item("message"), *close_item()]:
                        yield item_event
                final = {**start, **finished_fields(reply_event, output)}
                kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
                yield event(kind, response=final)
                on_done(reply_event)
    except APIError as exc:
        log.warning("%s failed while streaming: %s", start["id"], exc.message)
        yield event("error", code=exc.code or exc.type, message=exc.message, param=exc.param)
        code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
        failed = {**start, "status": "failed", "output": output, "error": {"code": code, "message": exc.message}}
        yield event("response.failed", response=failed)
    finally:
        reply.cancel()


# --- routes -----------------------------------------------------------------------------------------------------


def add_responses_routes(app: App, v1: APIRouter) -> None:
    """Add ``/responses`` to ``v1``, answering from ``app.backend``, with its own ``ResponseStore``."""
    store = ResponseStore(app.settings.responses_store)

    @v1.post("/responses", responses=ERROR_RESPONSES, summary="OpenAI Responses API, streaming or not")
    async def responses(body: ResponsesRequest, request: Request) -> Any:
        response_id, created, client = new_id("resp"), int(time.time()), client_key(request)
        history = history_of(store, body, client)
        chat = translate(app, translated, body, history)

        def keep(done: ChatDone) -> None:
            log_done(response_id, done)
            if body.store is not False:
                calls = [call.as_openai() for call in done.tool_calls]
                turn = {"role": "assistant", "content": done.answer, **({"tool_calls": calls} if calls else {})}
                store.put(response_id, client, [*history, turn])

        started = await start_reply(app, chat, request, stream=bool(body.stream), name=response_id)
        if isinstance(started, Response):
            return started
        reply, event = started
        start = response_body(response_id, created, app.model_name, body)
        if body.stream:
            return EventSourceResponse(response_events(reply, event, start, keep), sep="\n")
        assert isinstance(event, ChatDone)
        keep(event)
        return JSONResponse({**start, **finished_fields(event, output_items(event))})
