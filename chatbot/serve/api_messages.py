"""Anthropic's Messages API: ``POST /v1/messages`` (streaming or not) and ``POST /v1/messages/count_tokens``.

A translation, not a second pipeline: the request becomes one ``ChatRequest`` (``system`` a system
message, ``tool_use`` / ``tool_result`` blocks tool calls and tool messages, ``thinking`` Qwen3's
thinking switch, ``stop_sequences`` stop strings) that runs through the same backend, queue, caps and
key check as a chat completion; the reply's events come back as content blocks (``thinking``,
``text``, ``tool_use``) or as Anthropic's event stream (``message_start``, ``content_block_start`` /
``_delta`` / ``_stop``, ``message_delta``, ``message_stop``). Errors take Anthropic's shape,
``{"type": "error", "error": {"type", "message"}}`` (``AnthropicErrors``), and the key may come as
``x-api-key`` as well as ``Authorization: Bearer``.

    curl http://127.0.0.1:8000/v1/messages -H "Content-Type: application/json" \\
      -d '{"model": "qwen3", "max_tokens": 256, "messages": [{"role": "user", "content": "Hello"}]}'
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import ServerSentEvent

from ..chat.events import AnswerDelta, ChatDone, ThinkingDelta, ToolCallDelta
from ..chat.tools import ToolCall
from ..engine.sampling import MAX_STOP_STRINGS
from ..errors import InvalidRequestError
from .api_errors import ERROR_RESPONSES, APIError
from .api_models import sampling_field
from .api_replies import (
    Translated,
    compact,
    function_tool,
    log_done,
    reply_events,
    start_reply,
    stream_response,
    translate,
)
from .api_stream import ReplyEvents, ReplyStream
from .app_state import App

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
# Anthropic's error types by HTTP status (its own 529 "overloaded" is not used: a full queue is a 429).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}
PREFIX = "/v1/messages"


class AnthropicErrorDetail(BaseModel):
    type: str = Field(
        description="invalid_request_error, authentication_error, permission_error, not_found_error, "
        "request_too_large, rate_limit_error or api_error."
    )
    message: str = Field(description="What went wrong and what to do.")


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


ANTHROPIC_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": AnthropicErrorResponse, "description": about["description"]}
    for status, about in ERROR_RESPONSES.items()
}


# --- requests -------------------------------------------------------------------------------------------------


class ThinkingConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["enabled", "disabled", "adaptive"] = Field(
        description="enabled or adaptive: Qwen3 thinks first; disabled: it answers at once."
    )
    budget_tokens: int | None = Field(None, description="Accepted, not enforced: max_tokens bounds the thinking too.")


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str | None = Field(None, description="Absent or custom; Anthropic's server tools are not served.")
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any] | None = Field(None, description="A JSON Schema of the input object.")


class AnthropicToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(None, description="With type tool: the tool to call.")
    disable_parallel_tool_use: bool | None = Field(None, description="true: at most one tool_use block.")


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]] = Field(
        description="Text, or blocks: text, tool_use (assistant), tool_result (user); thinking blocks are dropped."
    )


class MessagesRequest(BaseModel):
    """POST /v1/messages (and, without max_tokens and stream, /v1/messages/count_tokens)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Accepted for compatibility; the one loaded model answers.")
    messages: list[AnthropicMessage] = Field(min_length=1, description="The conversation, oldest first.")
    system: str | list[dict[str, Any]] | None = Field(None, description="The system prompt: text or text blocks.")
    max_tokens: int | None = sampling_field(
        "max_new_tokens", "Most tokens to generate, thinking included (default: the room left, within the cap)."
    )
    stop_sequences: Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = Field(
        None, description=f"Up to {MAX_STOP_STRINGS} strings that end the reply."
    )
    stream: bool | None = Field(False, description="Stream Anthropic's server-sent events.")
    temperature: float | None = sampling_field("temperature")
    top_p: float | None = sampling_field("top_p")
    top_k: int | None = sampling_field("top_k")
    thinking: ThinkingConfig | None = Field(None, description="Qwen3's thinking switch (default disabled).")
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None


# --- translation ------------------------------------------------------------------------------------------------


def text_of(blocks: str | list[dict[str, Any]], where: str) -> str:
    """The text of a string or of text blocks; any other block is refused."""
    if isinstance(blocks, str):
        return blocks
    texts = []
    for j, block in enumerate(blocks):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequestError(
                f"{where}[{j}] must be a text block; this model reads text only", param=f"{where}[{j}]"
            )
        texts.append(block["text"])
    return "".join(texts)


def chat_messages(body: MessagesRequest) -> list[dict[str, Any]]:
    """The conversation as chat messages: tool_use blocks become tool calls, tool_result blocks tool messages.

    Raises:
        InvalidRequestError: a block this server does not read (image, document, server tools...), or a
            malformed tool_use / tool_result block.
    """
    messages: list[dict[str, Any]] = []
    if body.system:
        messages.append({"role": "system", "content": text_of(body.system, "system")})
    for i, message in enumerate(body.messages):
        where = f"messages[{i}].content"
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
            continue
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(message.content):
            kind, param = block.get("type"), f"{where}[{j}]"
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "tool_use" and message.role == "assistant":
                if not isinstance(block.get("name"), str) or not isinstance(block.get("input", {}), dict):
                    raise InvalidRequestError(
                        f"{param}: a tool_use block needs a name and an input object", param=param
                    )
                arguments = compact(block.get("input", {}))
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block["name"], "arguments": arguments},
                    }
                )
            elif kind == "tool_result" and message.role == "user":
                result = block.get("content", "")
                if not isinstance(result, str | list):
                    raise InvalidRequestError(f"{param}.content must be text or text blocks", param=f"{param}.content")
                text = text_of(result, f"{param}.content")
                if block.get("is_error"):
                    text = f"Error: {text}"
                messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
            elif kind in ("thinking", "redacted_thinking") and message.role == "assistant":
                continue  # earlier turns are re-sent answer-only, as Qwen3 recommends
            else:
                raise InvalidRequestError(
                    f"{param}: a {kind!r} block is not supported in a {message.role} message; this server reads "
                    "text, tool_use (assistant) and tool_result (user) blocks",
                    param=f"{param}.type",
                )
        if message.role == "assistant":
            messages.append(
                {"role": "assistant", "content": "".join(texts), **({"tool_calls": calls} if calls else {})}
            )
        elif texts or not any(block.get("type") == "tool_result" for block in message.content):
            messages.append({"role": "user", "content": "".join(texts)})
    return messages


def chat_tools(body: MessagesRequest) -> tuple[list[dict[str, Any]] | None, Any, bool]:
    """(tools, tool_choice, parallel_tool_calls) as chat completions take them."""
    tools = None
    if body.tools:
        for i, tool in enumerate(body.tools):
            if tool.type not in (None, "custom"):
                raise InvalidRequestError(
                    f"tools[{i}] is Anthropic's server tool {tool.type!r}, which this server does not run; "
                    "offer it as a custom tool with an input_schema",
                    param=f"tools[{i}].type",
                )
        tools = [function_tool(tool.name, tool.description, tool.input_schema) for tool in body.tools]
    choice = body.tool_choice
    if choice is None:
        return tools, None, True
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequestError('tool_choice {"type": "tool"} needs a name', param="tool_choice.name")
        named: Any = {"type": "function", "function": {"name": choice.name}}
    else:
        named = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    return tools, named, not choice.disable_parallel_tool_use


def translated(body: MessagesRequest, max_new_tokens: int | None = None) -> Translated:
    """The request as chat messages and ``ChatRequest.build`` options."""
    tools, tool_choice, parallel = chat_tools(body)
    thinking = body.thinking is not None and body.thinking.type != "disabled"
    return Translated(
        chat_messages(body),
        {
            "enable_thinking": thinking,
            "tools": tools,
            "tool_choice": tool_choice,
            "parallel_tool_calls": parallel,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "top_k": body.top_k,
            "max_new_tokens": max_new_tokens or body.max_tokens,
            "stop": body.stop_sequences,
        },
    )


# --- replies ----------------------------------------------------------------------------------------------------


def tool_use_block(call: ToolCall) -> dict[str, Any]:
    try:
        arguments = json.loads(call.arguments)
    except json.JSONDecodeError:
        arguments = call.arguments
    return {
        "type": "tool_use",
        "id": call.id,
        "name": call.name,
        "input": arguments if isinstance(arguments, dict) else {"value": arguments},
    }


def stop_fields(done: ChatDone) -> dict[str, Any]:
    """``stop_reason`` and ``stop_sequence``: "stop_sequence" with the string when one of the request's
    ``stop_sequences`` ended the reply (it is left out of the text, as Anthropic does)."""
    if done.finish_reason == "stop" and done.stop_sequence is not None:
        return {"stop_reason": "stop_sequence", "stop_sequence": done.stop_sequence}
    return {"stop_reason": STOP_REASONS.get(done.finish_reason, "end_turn"), "stop_sequence": None}


def usage(done: ChatDone | None) -> dict[str, int]:
    stats = done.stats if done is not None else {}
    return {
        "input_tokens": int(stats.get("prompt_tokens", 0)),
        "output_tokens": int(stats.get("new_tokens", 0)),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def message_body(message_id: str, model: str, done: ChatDone | None) -> dict[str, Any]:
    """The ``message`` object: the whole reply (``done``), or the empty one ``message_start`` carries."""
    content: list[dict[str, Any]] = []
    if done is not None:
        if done.thinking:
            content.append({"type": "thinking", "thinking": done.thinking, "signature": ""})
        if done.answer or not done.tool_calls:
            content.append({"type": "text", "text": done.answer})
        content.extend(tool_use_block(call) for call in done.tool_calls)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        **(stop_fields(done) if done is not None else {"stop_reason": None, "stop_sequence": None}),
        "usage": usage(done),
    }


def sse(data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=compact(data), event=data["type"])


async def message_events(reply: ReplyStream, first: Any, message_id: str, model: str) -> AsyncIterator[ServerSentEvent]:
    """Anthropic's event stream of one reply; an error after the headers is an ``error`` event."""
    index, open_kind = -1, None

    def start(block: dict[str, Any]) -> ServerSentEvent:
        nonlocal index, open_kind
        index, open_kind = index + 1, block["type"]
        return sse({"type": "content_block_start", "index": index, "content_block": block})

    def stop() -> ServerSentEvent:
        nonlocal open_kind
        open_kind = None
        return sse({"type": "content_block_stop", "index": index})

    def delta(body: dict[str, Any]) -> ServerSentEvent:
        return sse({"type": "content_block_delta", "index": index, "delta": body})

    try:
        yield sse({"type": "message_start", "message": message_body(message_id, model, None)})
        yield sse({"type": "ping"})
        async for event in reply_events(reply, first):
            if isinstance(event, ThinkingDelta | AnswerDelta):
                kind = "thinking" if isinstance(event, ThinkingDelta) else "text"
                if open_kind != kind:
                    if open_kind is not None:
                        yield stop()
                    yield start({"type": kind, kind: "", **({"signature": ""} if kind == "thinking" else {})})
                yield delta({"type": f"{kind}_delta", kind: event.text})
            elif isinstance(event, ToolCallDelta):
                if open_kind is not None:
                    yield stop()
                yield start({**tool_use_block(event.call), "input": {}})
                yield delta({"type": "input_json_delta", "partial_json": compact(tool_use_block(event.call)["input"])})
                yield stop()
            elif isinstance(event, ChatDone):
                if open_kind is not None:
                    yield stop()
                yield sse({"type": "message_delta", "delta": stop_fields(event), "usage": usage(event)})
                yield sse({"type": "message_stop"})
                log_done(message_id, event)
    except APIError as exc:
        yield sse(anthropic_error(exc.status, exc.message))
    finally:
        reply.cancel()


# --- errors -----------------------------------------------------------------------------------------------------


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


class AnthropicErrors:
    """ASGI middleware: an error answered under ``/v1/messages`` (by the route, the key check, the body or
    Host/Origin guards) takes Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        body = bytearray()

        async def rewrite(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held.update(message)
                return
            if not held or message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            try:
                error = json.loads(bytes(body))["error"]
                text = compact(anthropic_error(held["status"], error["message"])).encode()
            except (ValueError, KeyError, TypeError):
                text = bytes(body)  # not an error body of ours: passed on as it is
            headers = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
            await send({**held, "headers": [*headers, (b"content-length", str(len(text)).encode())]})
            await send({"type": "http.response.body", "body": text})

        await self.app(scope, receive, rewrite)


# --- routes -----------------------------------------------------------------------------------------------------


def add_messages_routes(app: App, v1: APIRouter) -> None:
    """Add ``/messages`` and ``/messages/count_tokens`` to ``v1``, answering from ``app.backend``."""

    stream = stream_response(
        "With stream false: a message. With stream true: Anthropic's events (message_start, content_block_start, "
        "content_block_delta, content_block_stop, message_delta, message_stop; error on a failure)."
    )

    @v1.post(
        "/messages",
        responses={200: stream, **ANTHROPIC_ERROR_RESPONSES},
        summary="Anthropic Messages API, streaming or not",
    )
    async def messages(body: MessagesRequest, request: Request) -> Any:
        message_id = f"msg_{uuid.uuid4().hex}"
        started = await start_reply(
            app, translate(app, translated, body), request, stream=bool(body.stream), name=message_id
        )
        if isinstance(started, Response):
            return started
        reply, event = started
        if body.stream:
            events = message_events(reply, event, message_id, app.model_name)
            return ReplyEvents(events, message_id, app.settings.stream_write_seconds)  # with the write deadline
        assert isinstance(event, ChatDone)
        log_done(message_id, event)
        return JSONResponse(message_body(message_id, app.model_name, event))

    @v1.post(
        "/messages/count_tokens", responses=ANTHROPIC_ERROR_RESPONSES, summary="Anthropic's token count of a request"
    )
    async def count_tokens(body: MessagesRequest, request: Request) -> Any:
        # Counted by the backend itself (the prompt of a one-token reply), so the count is the prompt the
        # model reads, chat template and tools included, here or behind --backend.
        started = await start_reply(
            app, translate(app, translated, body, 1), request, stream=False, name=f"count-{int(time.time())}"
        )
        if isinstance(started, Response):
            return started
        _, done = started
        assert isinstance(done, ChatDone)
        return {"input_tokens": int(done.stats.get("prompt_tokens", 0))}
