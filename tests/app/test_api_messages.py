"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) through the real ``anthropic`` package.

The app runs the scripted model as users start it, so the exact thinking and answer are known;
constrained decoding (``tool_choice`` any) makes it write a valid tool call. Text, thinking, streaming
with Anthropic's event sequence, a tool-use round trip, count_tokens, stop sequences, max_tokens and
Anthropic's error shape are checked; the key (``x-api-key``) in ``test_api_families_keyed.py``.
Run: ``.venv/bin/python -m pytest tests/app/test_api_messages.py -q``.
"""

from __future__ import annotations

import anthropic
import httpx
import pytest
from helpers.app import RunningApp
from helpers.tools import WEATHER

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING

HELLO = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL = {
    "name": WEATHER["function"]["name"],
    "description": WEATHER["function"]["description"],
    "input_schema": WEATHER["function"]["parameters"],
}


@pytest.fixture(scope="module")
def claude(api: RunningApp) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=api.api_url, api_key="x", max_retries=0, timeout=120)


def test_a_text_reply(claude) -> None:
    message = claude.messages.create(model="qwen3", max_tokens=256, messages=HELLO, system="Be brief.")
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == SCRIPTED_ANSWER
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_thinking_comes_back_as_a_thinking_block(claude) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    message = claude.messages.create(model="qwen3", max_tokens=512, messages=HELLO, thinking=thinking)
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == SCRIPTED_THINKING
    assert message.content[1].text == SCRIPTED_ANSWER
    off = claude.messages.create(model="qwen3", max_tokens=512, messages=HELLO, thinking={"type": "disabled"})
    assert [block.type for block in off.content] == ["text"]


def test_streaming_follows_anthropics_event_sequence(claude) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    with claude.messages.stream(model="qwen3", max_tokens=512, messages=HELLO, thinking=thinking) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [event.type for event in events if event.type in RAW_EVENTS]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    starts = [event.content_block.type for event in events if event.type == "content_block_start"]
    assert starts == ["thinking", "text"]
    # Every block opens, takes deltas, and closes before the next one opens.
    blocks = [kind for kind in kinds if kind.startswith("content_block")]
    assert blocks[0] == "content_block_start" and blocks[-1] == "content_block_stop"
    assert blocks.count("content_block_start") == blocks.count("content_block_stop") == 2
    assert final.content[0].thinking == SCRIPTED_THINKING and final.content[1].text == SCRIPTED_ANSWER
    assert final.stop_reason == "end_turn" and final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    with claude.messages.stream(model="qwen3", max_tokens=256, messages=HELLO) as stream:
        assert "".join(stream.text_stream) == SCRIPTED_ANSWER


RAW_EVENTS = {
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
}


def test_a_tool_use_round_trip(claude) -> None:
    asked = claude.messages.create(
        model="qwen3", max_tokens=256, messages=HELLO, tools=[WEATHER_TOOL], tool_choice={"type": "any"}
    )
    assert asked.stop_reason == "tool_use"
    uses = [block for block in asked.content if block.type == "tool_use"]
    assert len(uses) >= 1 and uses[0].name == "get_weather" and uses[0].id
    assert set(uses[0].input) == {"city", "unit"} and uses[0].input["city"] in {"Paris", "Tokyo"}
    history = [
        *HELLO,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in asked.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees"} for use in uses],
        },
    ]
    answered = claude.messages.create(model="qwen3", max_tokens=256, messages=history, tools=[WEATHER_TOOL])
    assert answered.stop_reason == "end_turn" and answered.content[-1].text == SCRIPTED_ANSWER
    named = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    with claude.messages.stream(
        model="qwen3", max_tokens=256, messages=HELLO, tools=[WEATHER_TOOL], tool_choice=named
    ) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["tool_use"] and final.stop_reason == "tool_use"
    assert set(final.content[0].input) == {"city", "unit"}


def test_count_tokens_is_the_prompt_the_reply_reads(claude) -> None:
    counted = claude.messages.count_tokens(model="qwen3", messages=HELLO, system="Be brief.")
    message = claude.messages.create(model="qwen3", max_tokens=256, messages=HELLO, system="Be brief.")
    assert counted.input_tokens == message.usage.input_tokens > 0
    with_tools = claude.messages.count_tokens(model="qwen3", messages=HELLO, tools=[WEATHER_TOOL])
    assert with_tools.input_tokens > counted.input_tokens


def test_stop_sequences_and_max_tokens(claude) -> None:
    word = SCRIPTED_ANSWER.split()[2]
    stops = ["never-said", word]
    stopped = claude.messages.create(model="qwen3", max_tokens=256, messages=HELLO, stop_sequences=stops)
    assert stopped.content[0].text == SCRIPTED_ANSWER[: SCRIPTED_ANSWER.index(word)].rstrip()
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word
    with claude.messages.stream(model="qwen3", max_tokens=256, messages=HELLO, stop_sequences=stops) as stream:
        events = list(stream)
        final = stream.get_final_message()
    delta = next(event for event in events if event.type == "message_delta")
    assert delta.delta.stop_reason == "stop_sequence" and delta.delta.stop_sequence == word
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == word
    unused = claude.messages.create(model="qwen3", max_tokens=256, messages=HELLO, stop_sequences=["never-said"])
    assert unused.stop_reason == "end_turn" and unused.stop_sequence is None
    cut = claude.messages.create(model="qwen3", max_tokens=2, messages=HELLO)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2


def test_errors_take_anthropics_shape(claude, api) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model="qwen3", max_tokens=256, messages=HELLO, extra_body={"temperature": 9})
    assert refused.value.body["type"] == "error" and refused.value.body["error"]["type"] == "invalid_request_error"
    assert "temperature" in refused.value.body["error"]["message"]
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError, match="image"):
        claude.messages.create(model="qwen3", max_tokens=256, messages=[{"role": "user", "content": [image]}])
    server_tool = {"type": "web_search_20250305", "name": "web_search"}
    with pytest.raises(anthropic.BadRequestError, match="server tool"):
        claude.messages.create(model="qwen3", max_tokens=256, messages=HELLO, tools=[server_tool])
    # Refusals made before the route (body size, Host) take the same shape.
    foreign = httpx.post(
        api.api_url + "/v1/messages", json={"messages": HELLO}, headers={"Host": "attacker.example"}, timeout=30
    )
    assert foreign.status_code == 403
    assert foreign.json() == {
        "type": "error",
        "error": {"type": "permission_error", "message": foreign.json()["error"]["message"]},
    }
