"""The Messages and Responses requests as chat messages and options (pure: no model, no server), and the
bounded store of kept replies (``previous_response_id``, ``GET /v1/responses/{id}``, its input items).
Run: ``.venv/bin/python -m pytest tests/unit/test_api_translation.py -q``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import Request
from helpers.openai_spec import assert_valid

from chatbot.chat.events import AnswerDelta
from chatbot.engine.limits import ReplyLimits
from chatbot.errors import InvalidRequestError
from chatbot.serve import api_messages, api_responses
from chatbot.serve.api_errors import APIError
from chatbot.serve.api_messages import MessagesRequest
from chatbot.serve.api_responses import ResponsesRequest
from chatbot.serve.api_responses_items import response_events
from chatbot.serve.api_responses_store import ResponseStore, StoredResponse, item_resources, owner_of, page

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


def kept(response_id: str, owner: str = "a", text: str = "") -> StoredResponse:
    body = {"id": response_id, "output": [{"type": "message", "role": "assistant", "content": text}]}
    return StoredResponse(owner, body, tuple(item_resources(text or "Hello")))


def test_the_store_is_bounded_and_answers_only_its_client() -> None:
    store = ResponseStore(capacity=2, max_bytes=10_000)
    for n in range(3):
        store.put(kept(f"resp_{n}", text=str(n)))
    assert store.get("resp_0", "a") is None and len(store) == 2  # the oldest went first
    found = store.get("resp_2", "a")
    assert found is not None and found.conversation()[-1]["content"] == "2"
    assert store.get("resp_2", "b") is None and not store.delete("resp_2", "b")
    store.put(kept("resp_big", text="x" * 20_000))  # larger than the whole store: not kept, nothing dropped
    assert store.get("resp_big", "a") is None and store.get("resp_2", "a") is not None
    assert store.delete("resp_2", "a") and store.get("resp_2", "a") is None and len(store) == 1
    roomy = ResponseStore(capacity=100, max_bytes=10_000)
    for n in range(5):  # the bytes bound: each about 4 kB of the 10 kB
        roomy.put(kept(f"resp_{n}", text="y" * 2_000))
    assert len(roomy) == 2 and roomy.get("resp_4", "a") is not None and roomy.get("resp_3", "a") is not None
    assert ResponseStore(capacity=0).put(kept("resp_x")) is None and len(ResponseStore(capacity=0)) == 0


def test_owners_differ_by_address_and_by_key() -> None:
    def request(address: str, headers: dict[str, str]) -> Request:
        raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
        return Request({"type": "http", "client": (address, 1), "headers": raw})

    one = owner_of(request("127.0.0.1", {"Authorization": "Bearer k1"}))
    assert one == owner_of(request("127.0.0.1", {"x-api-key": "k1"}))  # the same key, either header
    assert one != owner_of(request("127.0.0.2", {"Authorization": "Bearer k1"}))
    assert one != owner_of(request("127.0.0.1", {"Authorization": "Bearer k2"}))
    assert "k1" not in one  # a digest, not the key


def test_input_items_are_listed_in_openais_shapes_and_paged() -> None:
    items = item_resources(
        [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"role": "assistant", "content": "Let me look."},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": "18"}]},
        ]
    )
    assert items[2]["id"] == "rs_1" and items[5]["output"] == "18"
    assert len({item["id"] for item in items}) == len(items)
    listed = page(items, 4, "asc", None)
    assert_valid("ResponseItemList", listed)
    assert listed["data"] == items[:4] and listed["has_more"] and listed["last_id"] == items[3]["id"]
    rest = page(items, 4, "asc", listed["last_id"])
    assert rest["data"] == items[4:] and not rest["has_more"]
    assert page(items, 2, "desc", None)["data"] == [items[5], items[4]]
    with pytest.raises(APIError):
        page(items, 2, "desc", "msg_unknown")


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
    events = asyncio.run(collected(response_events(reply, AnswerDelta("Hel"), start, lambda done, final: None)))
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
