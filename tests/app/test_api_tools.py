"""The API against OpenAI's published spec, with tools, structured output, logprobs and logit_bias.

Every body is validated against the vendored schemas of openai/openai-openapi (tests/spec). The
app runs the scripted model as users start it; constrained decoding makes even that model write a
valid tool call or schema-valid JSON, so the tests assert on the exact shape. Clients: the official
``openai`` package (``parse()`` with a Pydantic model, a tool round trip, streaming) and httpx.
Run: ``.venv/bin/python -m pytest tests/app/test_api_tools.py -q``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import httpx
import pytest
from helpers.app import RunningApp
from helpers.clients import openai_client
from helpers.openai_spec import assert_valid
from helpers.tools import WEATHER  # the same tool in the parser tests and through the API
from pydantic import BaseModel
from transformers import AutoTokenizer

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING

HELLO = [{"role": "user", "content": "Hello"}]
THINKING_ON = {"chat_template_kwargs": {"enable_thinking": True}}
THINKING_OFF = {"chat_template_kwargs": {"enable_thinking": False}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def tokenizer(scripted_fp8: Path):
    return AutoTokenizer.from_pretrained(str(scripted_fp8))


def post(api: RunningApp, body: dict) -> httpx.Response:
    return httpx.post(api.api_url + "/v1/chat/completions", json={"model": "qwen3", **body}, timeout=120)


def reply_of(api: RunningApp, body: dict) -> dict:
    response = post(api, body)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert_valid("CreateChatCompletionResponse", reply)
    return reply


def stream_of(api: RunningApp, body: dict) -> list[dict]:
    chunks = []
    with httpx.stream(
        "POST", api.api_url + "/v1/chat/completions", json={"model": "qwen3", "stream": True, **body}, timeout=120
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line.removeprefix("data: "))
                assert_valid("CreateChatCompletionStreamResponse", chunk)
                chunks.append(chunk)
    return chunks


def assert_weather_arguments(arguments: str) -> None:
    value = json.loads(arguments)
    assert set(value) == {"city", "unit"} and value["city"] in {"Paris", "Tokyo"} and value["unit"] in {"C", "F"}


# --- the spec's shapes ------------------------------------------------------------------------------------------


def test_replies_chunks_and_errors_match_openais_spec(api) -> None:
    reply = reply_of(api, {"messages": HELLO, **THINKING_ON})
    message = reply["choices"][0]["message"]
    assert "refusal" in message and message["refusal"] is None
    assert message["content"] == SCRIPTED_ANSWER and message["reasoning_content"] == SCRIPTED_THINKING
    chunks = stream_of(api, {"messages": HELLO, "stream_options": {"include_usage": True}})
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == SCRIPTED_ANSWER
    error = post(api, {"messages": HELLO, "temperature": 9})
    assert error.status_code == 400
    assert_valid("ErrorResponse", error.json())
    models = httpx.get(api.api_url + "/v1/models").json()
    assert_valid("ListModelsResponse", models)
    assert_valid("Model", httpx.get(api.api_url + f"/v1/models/{models['data'][0]['id']}").json())


ACCEPTED = [
    ("developer role", {"messages": [{"role": "developer", "content": "Be brief."}, *HELLO]}),
    (
        "system not first, twice",
        {"messages": [*HELLO, {"role": "system", "content": "a"}, {"role": "system", "content": "b"}, *HELLO]},
    ),
    (
        "tool call and tool result in the history",
        {
            "messages": [
                *HELLO,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
            ],
            "tools": [CLOCK],
        },
    ),
    ("n and stream null", {"messages": HELLO, "n": None, "stream": None}),
    ("seed -1", {"messages": HELLO, "seed": -1}),
    ("top_p 0", {"messages": HELLO, "top_p": 0}),
]


@pytest.mark.parametrize(("case", "body"), ACCEPTED, ids=[case for case, _ in ACCEPTED])
def test_what_the_spec_allows_is_answered(api, case, body) -> None:
    del case
    assert reply_of(api, body)["choices"][0]["message"]["content"] == SCRIPTED_ANSWER


def test_a_final_assistant_message_is_continued(api) -> None:
    reply = reply_of(api, {"messages": [*HELLO, {"role": "assistant", "content": "Hello!"}], **THINKING_ON})
    # The continuation joins the message as written: its leading space comes with it (as vLLM's does).
    assert reply["choices"][0]["message"]["content"] == SCRIPTED_ANSWER.removeprefix("Hello!")


def test_context_errors_use_openais_words_and_no_max_tokens_means_the_room_left(api, tokenizer) -> None:
    per_word = len(tokenizer.encode("word " * 100, add_special_tokens=False)) / 100
    words = int((8192 - 700) / per_word)  # leaves less than the 2048 tokens a fixed default would reserve
    messages = [{"role": "user", "content": "word " * words}]
    reply = reply_of(api, {"messages": messages})
    assert reply["usage"]["prompt_tokens"] > 8192 - 2048
    assert reply["choices"][0]["message"]["content"] == SCRIPTED_ANSWER
    refused = post(api, {"messages": messages, "max_tokens": 2048})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert error["message"].startswith("This model's maximum context length is 8192 tokens. However, you requested")
    too_long = post(api, {"messages": [{"role": "user", "content": "word " * (2 * words)}]}).json()["error"]
    assert too_long["message"].startswith("This model's maximum context length is 8192 tokens. However, your messages")


def test_head_answers_where_get_does_and_legacy_completions_say_what_to_use(api) -> None:
    for path in ("/health", "/v1/models"):
        response = httpx.head(api.api_url + path)
        assert response.status_code == 200 and response.content == b""
    legacy = httpx.post(api.api_url + "/v1/completions", json={"model": "qwen3", "prompt": "Hi"})
    assert legacy.status_code == 404
    assert_valid("ErrorResponse", legacy.json())
    assert "/v1/chat/completions" in legacy.json()["error"]["message"]


# --- tools --------------------------------------------------------------------------------------------------------


def test_tools_reach_the_prompt_and_auto_lets_the_model_answer(api) -> None:
    plain = reply_of(api, {"messages": HELLO})
    offered = reply_of(api, {"messages": HELLO, "tools": [WEATHER, CLOCK]})
    assert offered["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 50  # rendered by the template
    choice = offered["choices"][0]
    assert choice["message"]["content"] == SCRIPTED_ANSWER and "tool_calls" not in choice["message"]
    assert choice["finish_reason"] == "stop"
    none = reply_of(api, {"messages": HELLO, "tools": [WEATHER], "tool_choice": "none"})
    assert none["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]


@pytest.mark.parametrize("thinking", [False, True], ids=["answer", "after thinking"])
def test_a_named_tool_choice_gives_exactly_that_call(api, thinking) -> None:
    mode = THINKING_ON if thinking else THINKING_OFF
    body = {"messages": HELLO, "tools": [WEATHER, CLOCK], "tool_choice": NAMED, **mode}
    choice = reply_of(api, body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["reasoning_content"] == (SCRIPTED_THINKING if thinking else None)
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert_weather_arguments(call["function"]["arguments"])


def test_required_tool_calls_stream_as_delta_tool_calls(client) -> None:
    stream = client.chat.completions.create(
        model="qwen3", messages=HELLO, tools=[WEATHER], tool_choice="required", stream=True
    )
    chunks = list(stream)
    calls = [call for chunk in chunks for call in (chunk.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].index == 0 and calls[0].function.name == "get_weather"
    assert_weather_arguments(calls[0].function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(chunk.choices[0].delta.content or "" for chunk in chunks)


def test_a_tool_round_trip_through_the_openai_sdk(client) -> None:
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="qwen3", messages=messages, tools=[WEATHER], tool_choice=NAMED)
    call = first.choices[0].message.tool_calls[0]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))  # content null + tool_calls
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21})})
    second = client.chat.completions.create(model="qwen3", messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == SCRIPTED_ANSWER


# --- structured output ---------------------------------------------------------------------------------------------


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    sure: bool


@pytest.mark.parametrize("thinking", [False, True], ids=["answer", "after thinking"])
def test_openai_parse_with_a_pydantic_model(client, thinking) -> None:
    completion = client.chat.completions.parse(
        model="qwen3", messages=HELLO, response_format=Verdict, extra_body=THINKING_ON if thinking else None
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, Verdict)
    assert Verdict.model_validate_json(message.content) == message.parsed
    if thinking:
        assert message.model_extra["reasoning_content"] == SCRIPTED_THINKING


def test_json_object_and_logit_bias(api, tokenizer) -> None:
    # Any JSON object: the biases make the scripted model open it and close it at once.
    opening, closing = tokenizer.convert_tokens_to_ids("{"), tokenizer.convert_tokens_to_ids("}")
    bias = {str(opening): 30, str(closing): 50}
    body = {"messages": HELLO, "response_format": {"type": "json_object"}, "logit_bias": bias, "max_tokens": 40}
    body |= THINKING_OFF  # the biases would open and close the thinking's braces too
    reply = reply_of(api, body)
    assert json.loads(reply["choices"][0]["message"]["content"]) == {}
    chunks = stream_of(api, body)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "{}"


def test_logit_bias_bans_a_token(api, tokenizer) -> None:
    first_word = tokenizer.convert_tokens_to_ids("Hello!")
    reply = reply_of(api, {"messages": HELLO, "temperature": 0, "logit_bias": {str(first_word): -100}, "max_tokens": 5})
    assert not (reply["choices"][0]["message"]["content"] or "").startswith("Hello!")


# --- logprobs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("thinking", [False, True], ids=["no thinking", "thinking"])
def test_logprobs_cover_the_answer_tokens(api, thinking) -> None:
    body = {"messages": HELLO, "logprobs": True, "top_logprobs": 3, **(THINKING_ON if thinking else {})}
    reply = reply_of(api, body)
    content = reply["choices"][0]["logprobs"]["content"]
    assert "".join(entry["token"] for entry in content) == SCRIPTED_ANSWER  # the answer, not the thinking
    for entry in content:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode() == entry["token"]
        assert len(entry["top_logprobs"]) == 3 and entry["top_logprobs"][0]["token"] == entry["token"]
    chunks = stream_of(api, body)
    # Each chunk carries its own tokens' entries (as OpenAI and vLLM stream them), not all in the last one.
    with_logprobs = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0].get("logprobs")]
    assert len(with_logprobs) > 1
    for choice in with_logprobs:
        tokens = "".join(entry["token"] for entry in choice["logprobs"]["content"])
        assert tokens == choice["delta"].get("content"), choice  # the chunk's text is its tokens' text
    streamed = [entry for choice in with_logprobs for entry in choice["logprobs"]["content"]]
    assert [entry["token"] for entry in streamed] == [entry["token"] for entry in content]
    assert reply_of(api, {"messages": HELLO})["choices"][0]["logprobs"] is None


def test_streamed_logprobs_arrive_with_their_chunks_in_the_openai_client(api) -> None:
    client = openai_client(api)
    stream = client.chat.completions.create(
        model="qwen3", messages=HELLO, logprobs=True, top_logprobs=2, stream=True, seed=7
    )
    pieces = [(c.choices[0].delta.content or "", c.choices[0].logprobs) for c in stream if c.choices]
    answered = [(text, logprobs) for text, logprobs in pieces if text]
    assert answered and all(logprobs is not None and logprobs.content for _, logprobs in answered)
    for text, logprobs in answered:
        assert "".join(entry.token for entry in logprobs.content) == text
        assert all(len(entry.top_logprobs) == 2 for entry in logprobs.content)
    assert "".join(text for text, _ in answered) == SCRIPTED_ANSWER
