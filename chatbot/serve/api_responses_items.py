"""The Responses API's output: ``reasoning``, ``message`` and ``function_call`` items made from a reply's events,
its ``usage``, and the event stream of a streamed reply (``response.created`` ... ``response.completed``).

Used by ``api_responses``; the events and items follow OpenAI's published schemas (checked in the tests).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import ServerSentEvent

from ..chat.events import AnswerDelta, ChatDone, ThinkingDelta, ToolCallDelta
from ..chat.tools import ToolCall
from .api_errors import APIError
from .api_replies import compact, reply_events
from .api_stream import ReplyStream

log = logging.getLogger(__name__)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if status == "completed" else []
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def text_part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An ``output_text`` part; ``logprobs``: chat completions' entries (token, logprob, bytes, top_logprobs),
    which are the Responses API's ``LogProb`` too."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def delta_logprobs(entries: Any) -> list[dict[str, Any]]:
    """Entries as the stream's text events carry them (``ResponseLogProb``: no bytes)."""
    return [
        {
            "token": entry["token"],
            "logprob": entry["logprob"],
            "top_logprobs": [{"token": top["token"], "logprob": top["logprob"]} for top in entry["top_logprobs"]],
        }
        for entry in entries
    ]


def answer_logprobs(done: ChatDone) -> list[dict[str, Any]]:
    return list((done.logprobs or {}).get("content") or [])


def message_item(
    item_id: str, text: str, status: str = "completed", logprobs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    content = [text_part(text, logprobs)] if status == "completed" else []
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
        items.append(message_item(new_id("msg"), done.answer, logprobs=answer_logprobs(done)))
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
    """The Responses event stream of one reply, from the in-progress ``start`` body; ``on_done(done, final)``
    keeps the finished reply and its response object. An error after the headers is an ``error`` event, then
    ``response.failed``."""
    sequence = 0
    output: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None  # the open reasoning or message item, with its text so far
    sent_logprobs: list[dict[str, Any]] = []  # the answer's entries streamed so far

    def event(kind: str, **fields: Any) -> ServerSentEvent:
        nonlocal sequence
        sequence += 1
        return sse({"type": kind, "sequence_number": sequence - 1, **fields})

    def item_fields(extra: dict[str, Any] | None = None) -> dict[str, Any]:
        assert current is not None
        return {"item_id": current["id"], "output_index": len(output), **(extra or {})}

    def open_item(kind: str) -> list[ServerSentEvent]:
        nonlocal current
        current = {"id": new_id("rs" if kind == "reasoning" else "msg"), "kind": kind, "text": "", "logprobs": []}
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
            entries = current["logprobs"]
            item, part = message_item(current["id"], text, logprobs=entries), text_part(text, entries)
            fields = {**index, "text": text, "logprobs": delta_logprobs(entries)}
            done = event("response.output_text.done", **item_fields(fields))
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
                    entries = list(reply_event.logprobs) if isinstance(reply_event, AnswerDelta) else []
                    current["logprobs"].extend(entries)
                    sent_logprobs.extend(entries)
                    fields = {"content_index": 0, "delta": reply_event.text, "logprobs": delta_logprobs(entries)}
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
                if current is not None and current["kind"] == "message":  # entries whose text came last
                    current["logprobs"].extend(answer_logprobs(reply_event)[len(sent_logprobs) :])
                for item_event in close_item():
                    yield item_event
                if not output:  # nothing was said: one empty message, as the body without streaming has
                    for item_event in [*open_item("message"), *close_item()]:
                        yield item_event
                final = {**start, **finished_fields(reply_event, output)}
                kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
                yield event(kind, response=final)
                on_done(reply_event, final)
    except APIError as exc:
        log.warning("%s failed while streaming: %s", start["id"], exc.message)
        yield event("error", code=exc.code or exc.type, message=exc.message, param=exc.param)
        code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
        failed = {**start, "status": "failed", "output": output, "error": {"code": code, "message": exc.message}}
        yield event("response.failed", response=failed)
    finally:
        reply.cancel()
