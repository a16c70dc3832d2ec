"""The Messages and Responses requests as chat messages and options (pure: no model, no server), and the
bounded store behind ``previous_response_id``.
Run: ``.venv/bin/python -m pytest tests/unit/test_api_translation.py -q``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers.openai_spec import assert_valid

from chatbot.chat.events import AnswerDelta
from chatbot.engine.limits import ReplyLimits
from chatbot.errors import InvalidRequestError
from chatbot.serve import api_messages, api_responses
from chatbot.serve.api_errors import APIError
from chatbot.serve.api_messages import MessagesRequest
from chatbot.serve.api_responses import ResponsesRequest, ResponseStore
from chatbot.serve.api_responses_items import response_events

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def test_anthropic_blocks_become_tool_calls_and_tool_messages() -> None:
    body = MessagesRequest.model_validate(
        {
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hm", "signature": ""},
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18"}]},
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ],
            "tools": [{"name": "get_weather", "input_schema": SCHEMA}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "stop_sequences": ["END"],
            "max_tokens": 64,
        }
    )
    translated = api_messages.translated(body)
    assert translated.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    options = translated.options
    assert options["enable_thinking"] is True and options["tool_choice"] == "required"
    assert options["parallel_tool_calls"] is False and options["stop"] == ["END"] and options["max_new_tokens"] == 64
    assert options["tools"] == [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]
    request = translated.chat_request("test", ReplyLimits())
    assert request.thinking and request.strict_context and request.max_calls == 1


def test_responses_items_merge_calls_into_the_assistant_turn() -> None:
    body = ResponsesRequest.model_validate(
        {
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
                {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Tokyo"}'},
                {"type": "function_call_output", "call_id": "call_1", "output": "18"},
            ],
            "reasoning": {"effort": "low"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": SCHEMA}},
            "tool_choice": {"type": "function", "name": "get_weather"},
            "tools": [{"type": "function", "name": "get_weather", "parameters": SCHEMA}],
        }
    )
    translated = api_responses.translated(body, api_responses.input_messages(body.input))
    assert [m["role"] for m in translated.messages] == ["system", "user", "assistant", "tool"]
    assert [call["id"] for call in translated.messages[2]["tool_calls"]] == ["call_1", "call_2"]
    assert translated.options["enable_thinking"] is False
    assert translated.options["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert translated.options["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": SCHEMA},
    }


@pytest.mark.parametrize(
    "item",
    [
        {"type": "item_reference", "id": "msg_1"},
        {"role": "user", "content": [{"type": "input_image", "image_url": "x"}]},
        {"role": "tool", "content": "x"},
    ],
)
def test_items_this_server_does_not_read_are_refused(item) -> None:
    with pytest.raises(InvalidRequestError):
        api_responses.input_messages([item])


def test_the_store_is_bounded_and_answers_only_its_client() -> None:
    store = ResponseStore(capacity=2, max_bytes=10_000)
    for n in range(3):
        store.put(f"resp_{n}", "a", [{"role": "user", "content": str(n)}])
    assert store.get("resp_0", "a") is None  # the oldest went first
    assert store.get("resp_2", "a") == [{"role": "user", "content": "2"}]
    assert store.get("resp_2", "b") is None
    store.put("resp_big", "a", [{"role": "user", "content": "x" * 20_000}])  # larger than the whole store
    assert store.get("resp_big", "a") is None and store.get("resp_2", "a") is not None


class FailingReply:
    """A reply that fails after its first piece of answer, as a backend failing mid-stream does."""

    def __init__(self) -> None:
        self.cancelled = False

    async def next_event(self):
        raise APIError(500, "Generation failed part-way.", type="server_error", code="generation_failed")

    def cancel(self) -> None:
        self.cancelled = True


async def collected(events) -> list[dict]:
    return [{"event": item.event, **json.loads(item.data)} async for item in events]


def test_a_failure_mid_stream_ends_each_stream_in_its_apis_words() -> None:
    body = ResponsesRequest.model_validate({"input": "Hello"})
    start = api_responses.response_body("resp_1", 0, "qwen3", body)
    reply = FailingReply()
    events = asyncio.run(collected(response_events(reply, AnswerDelta("Hel"), start, lambda done: None)))
    for event in events:
        assert_valid("ResponseStreamEvent", {key: value for key, value in event.items() if key != "event"})
    assert [event["type"] for event in events][-2:] == ["error", "response.failed"] and reply.cancelled
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "Generation failed part-way."}
    reply = FailingReply()
    events = asyncio.run(collected(api_messages.message_events(reply, AnswerDelta("Hel"), "msg_1", "qwen3")))
    assert events[-1] == {
        "event": "error",
        "type": "error",
        "error": {"type": "api_error", "message": "Generation failed part-way."},
    }
    assert [event["type"] for event in events][:3] == ["message_start", "ping", "content_block_start"]
