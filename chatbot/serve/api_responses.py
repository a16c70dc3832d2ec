"""OpenAI's Responses API: ``POST /v1/responses``, streaming or not.

A translation, not a second pipeline: ``instructions`` and the ``input`` items (messages,
``function_call`` and ``function_call_output`` items; ``reasoning`` items are dropped, as earlier
thinking is) become one ``ChatRequest`` that runs through the same backend, queue, caps and key check
as a chat completion. Qwen3 thinks first unless ``reasoning.effort`` is none, minimal or low (no
``reasoning``, or medium, high or xhigh: it thinks, as chat completions here and vLLM serving Qwen3 do by
default), function ``tools`` and ``tool_choice`` map onto chat
completions' tools, ``text.format`` onto ``response_format``. The reply comes back as ``reasoning``,
``message`` and ``function_call`` output items, or as the Responses event stream (``response.created``,
``response.output_item.added``, ``response.reasoning_text.delta``, ``response.output_text.delta``,
``response.function_call_arguments.delta``, ... ``response.completed``). With
``include: ["message.output_text.logprobs"]`` (or ``top_logprobs`` above 0) the answer's text carries the
log-probability of each of its tokens.

``previous_response_id`` continues a reply this server kept; ``api_responses_store`` keeps them (at most
``--responses-store`` replies, in memory only, each readable by the client that made it) and serves
``GET`` / ``DELETE /v1/responses/{id}`` and its ``input_items``. With ``--responses-store 0`` nothing is
kept, and a request naming a previous response gets a 400.

    curl http://127.0.0.1:8000/v1/responses -H "Content-Type: application/json" \\
      -d '{"model": "qwen3", "input": "Hello"}'
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from ..chat.events import ChatDone
from ..engine.sampling import MAX_TOP_LOGPROBS
from ..errors import InvalidRequestError
from .api_errors import ERROR_RESPONSES, APIError
from .api_models import sampling_field
from .api_replies import Translated, function_tool, log_done, start_reply, stream_response, translate
from .api_responses_items import finished_fields, new_id, output_items, response_events
from .api_responses_store import ResponseStore, StoredResponse, add_stored_routes, item_resources, owner_of
from .api_stream import ReplyEvents
from .app_state import App

log = logging.getLogger(__name__)

QUICK_EFFORTS = ("none", "minimal", "low")  # Qwen3 answers at once; any other effort, or none given: it thinks
LOGPROBS = "message.output_text.logprobs"  # the include value that asks for the answer's log-probabilities
TEXT_PARTS = ("input_text", "output_text", "text")


# --- requests -------------------------------------------------------------------------------------------------


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = Field(
        None,
        description="none, minimal or low: Qwen3 answers at once; medium, high, xhigh or none given (the "
        "default): it thinks first.",
    )


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: dict[str, Any] | None = Field(None, description="text, json_object or json_schema (name, schema).")


class ResponsesRequest(BaseModel):
    """POST /v1/responses. Unknown fields clients commonly send (truncation, user...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Accepted for compatibility; the one loaded model answers.")
    input: str | list[dict[str, Any]] = Field(description="Text, or items: messages, function_call(_output).")
    instructions: str | None = Field(None, description="A system message first (not carried to later replies).")
    max_output_tokens: int | None = sampling_field("max_new_tokens", "Most tokens to generate, thinking included.")
    temperature: float | None = sampling_field("temperature")
    top_p: float | None = sampling_field("top_p")
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = Field(
        None, description="This many most likely tokens per answer token, with their log-probabilities."
    )
    include: list[str] | None = Field(
        None, description=f"{LOGPROBS}: the answer's log-probabilities; other values are accepted and ignored."
    )
    reasoning: ReasoningConfig | None = Field(None, description="Thinking: on unless effort is none, minimal or low.")
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
    """Qwen3's thinking switch: on unless the effort asked for is none, minimal or low (on by default, as
    chat completions here and vLLM's Responses API with Qwen3 have it)."""
    return body.reasoning is None or body.reasoning.effort not in QUICK_EFFORTS


def logprobs(body: ResponsesRequest) -> bool:
    return LOGPROBS in (body.include or []) or bool(body.top_logprobs)


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
            "logprobs": logprobs(body),
            "top_logprobs": body.top_logprobs or 0,
        },
    )


def history_of(
    store: ResponseStore, body: ResponsesRequest, owner: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the conversation as chat messages, its items as kept): the kept conversation of
    ``previous_response_id`` (nothing without one), then this request's input.

    Raises:
        APIError: 400 for a previous response that is not kept here, or input this server does not read.
    """
    previous: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        if store.capacity == 0:
            raise APIError(
                400,
                "previous_response_id is off on this server (--responses-store 0): send the whole conversation "
                "as input items instead.",
                param="previous_response_id",
            )
        kept = store.get(body.previous_response_id, owner)
        if kept is None:
            raise APIError(
                400,
                f"previous_response_id {body.previous_response_id!r} is not kept on this server: it never existed, "
                f"was made by another client, was stored with store: false, was deleted, or was dropped (the "
                f"server keeps the latest {store.capacity} replies, in memory only). Send the whole conversation "
                "as input items.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        previous = kept.conversation()
    try:
        return input_messages(previous) + input_messages(body.input), previous + item_resources(body.input)
    except InvalidRequestError as exc:
        raise APIError(400, str(exc).replace("\nFix: ", " Fix: "), param=exc.param) from exc


# --- the response object ------------------------------------------------------------------------------------


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
        "top_logprobs": body.top_logprobs,
        "text": {"format": (body.text.format if body.text is not None else None) or {"type": "text"}},
        "tool_choice": body.tool_choice or "auto",
        "tools": tools,
        "truncation": "disabled",
        "metadata": body.metadata or {},
        **fields,
    }


# --- routes -----------------------------------------------------------------------------------------------------


def add_responses_routes(app: App, v1: APIRouter) -> None:
    """Add ``/responses`` to ``v1``, answering from ``app.backend``, and the routes of the replies it keeps
    (``api_responses_store``)."""
    store = ResponseStore(app.settings.responses_store)
    add_stored_routes(store, v1)

    stream = stream_response(
        "With stream false: a response. With stream true: the Responses events, response.created to "
        "response.completed (response.incomplete when max_output_tokens cut it; error, then response.failed)."
    )

    @v1.post("/responses", responses={200: stream, **ERROR_RESPONSES}, summary="OpenAI Responses API, streaming or not")
    async def responses(body: ResponsesRequest, request: Request) -> Any:
        response_id, created, owner = new_id("resp"), int(time.time()), owner_of(request)
        history, items = history_of(store, body, owner)
        chat = translate(app, translated, body, history)

        def keep(done: ChatDone, final: dict[str, Any]) -> None:
            log_done(response_id, done)
            if body.store is not False:
                store.put(StoredResponse(owner, final, tuple(items)))

        started = await start_reply(app, chat, request, stream=bool(body.stream), name=response_id)
        if isinstance(started, Response):
            return started
        reply, event = started
        start = response_body(response_id, created, app.model_name, body)
        if body.stream:
            events = response_events(reply, event, start, keep)
            return ReplyEvents(events, response_id, app.settings.stream_write_seconds)  # with the write deadline
        assert isinstance(event, ChatDone)
        final = {**start, **finished_fields(event, output_items(event))}
        keep(event, final)
        return JSONResponse(final)
