"""OpenAI's Responses API (``/v1/responses``) through the real ``openai`` package and the OpenAI Agents SDK.

The app runs the scripted model as users start it, so the exact thinking and answer are known;
constrained decoding makes it write a valid function call or schema-valid JSON. Every body and
stream event is validated against OpenAI's published schemas (``tests/spec``).
Run: ``.venv/bin/python -m pytest tests/app/test_api_responses.py -q``.
"""

from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pytest
from helpers.app import RunningApp
from helpers.clients import openai_client
from helpers.openai_spec import assert_valid
from helpers.tools import WEATHER
from pydantic import BaseModel

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING

WEATHER_TOOL = {"type": "function", "strict": True, **WEATHER["function"]}


class Weather(BaseModel):
    city: Literal["Paris", "Tokyo"]
    unit: Literal["C", "F"]


def test_a_text_reply(client) -> None:
    response = client.responses.create(model="qwen3", input="Hello", instructions="Be brief.")
    assert response.status == "completed" and response.id.startswith("resp_")
    # No reasoning asked for: Qwen3 thinks, as chat completions and vLLM's Responses API do by default.
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output_text == SCRIPTED_ANSWER
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0


def test_reasoning_effort_switches_thinking(client) -> None:
    thought = client.responses.create(model="qwen3", input="Hello", reasoning={"effort": "high"})
    assert [item.type for item in thought.output] == ["reasoning", "message"]
    assert thought.output[0].content[0].text == SCRIPTED_THINKING and thought.output_text == SCRIPTED_ANSWER
    for effort in ("none", "minimal", "low"):
        quick = client.responses.create(model="qwen3", input="Hello", reasoning={"effort": effort})
        assert [item.type for item in quick.output] == ["message"] and quick.output_text == SCRIPTED_ANSWER


def test_streaming_sends_the_responses_events(client) -> None:
    stream = client.responses.create(model="qwen3", input="Hello", reasoning={"effort": "medium"}, stream=True)
    events = list(stream)
    for event in events:
        assert_valid("ResponseStreamEvent", event.model_dump(mode="json", exclude_unset=True))
    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    thinking = "".join(event.delta for event in events if event.type == "response.reasoning_text.delta")
    answer = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert thinking == SCRIPTED_THINKING and answer == SCRIPTED_ANSWER
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    final = events[-1].response
    assert [item.type for item in final.output] == ["reasoning", "message"] and final.output_text == SCRIPTED_ANSWER
    with client.responses.stream(model="qwen3", input="Hello") as helper:
        assert helper.get_final_response().output_text == SCRIPTED_ANSWER


def test_a_function_tool_round_trip(client) -> None:
    asked = client.responses.create(model="qwen3", input="Weather?", tools=[WEATHER_TOOL], tool_choice="required")
    calls = [item for item in asked.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and calls[0].call_id
    assert set(json.loads(calls[0].arguments)) == {"city", "unit"}
    outputs = [{"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"} for call in calls]
    # Stateless: the whole conversation as items.
    items = [{"role": "user", "content": "Weather?"}, *[item.model_dump() for item in asked.output], *outputs]
    answered = client.responses.create(model="qwen3", input=items, tools=[WEATHER_TOOL])
    assert answered.output_text == SCRIPTED_ANSWER
    # Kept: only the new items, after previous_response_id.
    chained = client.responses.create(model="qwen3", input=outputs, tools=[WEATHER_TOOL], previous_response_id=asked.id)
    assert chained.output_text == SCRIPTED_ANSWER and chained.previous_response_id == asked.id
    assert chained.usage.input_tokens == answered.usage.input_tokens
    named = {"type": "function", "name": "get_weather"}
    stream = client.responses.create(
        model="qwen3", input="Weather?", tools=[WEATHER_TOOL], tool_choice=named, stream=True
    )
    events = list(stream)
    for event in events:
        assert_valid("ResponseStreamEvent", event.model_dump(mode="json", exclude_unset=True))
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert set(json.loads(arguments)) == {"city", "unit"}
    assert [item.type for item in events[-1].response.output] == ["reasoning", "function_call"]


def test_structured_output(client) -> None:
    schema = {"type": "json_schema", "name": "weather", "schema": Weather.model_json_schema(), "strict": True}
    response = client.responses.create(model="qwen3", input="Weather?", text={"format": schema})
    Weather.model_validate_json(response.output_text)
    parsed = client.responses.parse(model="qwen3", input="Weather?", text_format=Weather)
    assert isinstance(parsed.output_parsed, Weather)


def test_errors_and_refusals(client) -> None:
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        client.responses.create(model="qwen3", input="Hello", previous_response_id="resp_unknown")
    with pytest.raises(openai.BadRequestError, match="function tools only"):
        client.responses.create(model="qwen3", input="Hello", tools=[{"type": "web_search"}])
    image = {"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}
    with pytest.raises(openai.BadRequestError, match="text only"):
        client.responses.create(model="qwen3", input=[image])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.responses.create(model="qwen3", input="Hello", temperature=9)
    not_kept = client.responses.create(model="qwen3", input="Hello", store=False)
    with pytest.raises(openai.BadRequestError, match="not kept"):
        client.responses.create(model="qwen3", input="Hello", previous_response_id=not_kept.id)


def test_an_agent_with_one_function_tool(api: RunningApp) -> None:
    agents = pytest.importorskip("agents")
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: Literal["Paris", "Tokyo"]) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"18 degrees in {city}"

    agents.set_tracing_disabled(True)
    model = agents.OpenAIResponsesModel(
        model="qwen3", openai_client=openai.AsyncOpenAI(base_url=api.api_url + "/v1", api_key="x", max_retries=0)
    )
    agent = agents.Agent(
        name="weather",
        instructions="Answer with the weather.",
        model=model,
        tools=[get_weather],
        model_settings=agents.ModelSettings(tool_choice="required"),  # reset to auto after the call
    )
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?", max_turns=4)
    assert calls and calls[0] in {"Paris", "Tokyo"}
    assert result.final_output == SCRIPTED_ANSWER


def test_a_kept_response_can_be_read_listed_and_deleted(client) -> None:
    first = client.responses.create(model="qwen3", input="Hello", instructions="Be brief.", metadata={"k": "v"})
    kept = client.responses.retrieve(first.id)
    assert kept.model_dump() == first.model_dump()  # the response object as it was returned
    weather = {"type": "function_call_output", "call_id": "call_1", "output": "18 degrees"}
    second = client.responses.create(
        model="qwen3", input=[{"role": "user", "content": "And now?"}, weather], previous_response_id=first.id
    )
    # The items the reply read: the kept conversation (first's input and output), then its own input.
    listed = list(client.responses.input_items.list(second.id, order="asc"))
    assert [item.type for item in listed] == ["message", "reasoning", "message", "message", "function_call_output"]
    assert [getattr(item, "role", None) for item in listed[:4]] == ["user", None, "assistant", "user"]
    assert listed[0].content[0].text == "Hello" and listed[2].content[0].text == SCRIPTED_ANSWER
    assert listed[1].id == first.output[0].id and listed[2].id == first.output[1].id
    assert listed[4].call_id == "call_1" and listed[4].output == "18 degrees"
    assert len({item.id for item in listed}) == len(listed)
    newest = client.responses.input_items.list(second.id, limit=2)  # desc by default, as OpenAI lists them
    assert [item.id for item in newest.data] == [listed[4].id, listed[3].id] and newest.has_more
    assert [item.id for item in newest.get_next_page().data] == [listed[2].id, listed[1].id]
    assert [item.id for item in client.responses.input_items.list(second.id, limit=100)] == [
        item.id for item in reversed(listed)
    ]
    assert client.responses.delete(first.id) is None  # the openai package returns nothing on success
    for gone in (
        lambda: client.responses.retrieve(first.id),
        lambda: client.responses.delete(first.id),
        lambda: client.responses.input_items.list(first.id),
        lambda: client.responses.create(model="qwen3", input="Hi", previous_response_id=first.id),
    ):
        with pytest.raises((openai.NotFoundError, openai.BadRequestError)):
            gone()
    assert client.responses.retrieve(second.id).output_text == SCRIPTED_ANSWER  # the one after it stays


def test_kept_responses_are_found_only_by_their_client(api: RunningApp, client) -> None:
    made = client.responses.create(model="qwen3", input="Hello")
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.retrieve("resp_unknown")
    assert unknown.value.body["type"] == "invalid_request_error" and "resp_unknown" in unknown.value.body["message"]
    other_token = openai_client(api, api_key="another-token")
    with pytest.raises(openai.NotFoundError):
        other_token.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        other_token.responses.delete(made.id)
    not_kept = client.responses.create(model="qwen3", input="Hello", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(not_kept.id)
    streamed = client.responses.create(model="qwen3", input="Hello", stream=True)
    final = [event for event in streamed][-1].response
    assert client.responses.retrieve(final.id).output_text == SCRIPTED_ANSWER == final.output_text
    replay = httpx.get(f"{api.api_url}/v1/responses/{made.id}?stream=true", headers=BEARER_X, timeout=60)
    assert replay.status_code == 400 and replay.json()["error"]["param"] == "stream"
    assert httpx.get(f"{api.api_url}/v1/responses/{made.id}", headers=BEARER_X, timeout=60).json()["id"] == made.id
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=60) as elsewhere:
        assert elsewhere.get(f"{api.api_url}/v1/responses/{made.id}", headers=BEARER_X).status_code == 404


BEARER_X = {"Authorization": "Bearer x"}  # the token openai_client sends


def test_logprobs_when_asked_for(client) -> None:
    plain = client.responses.create(model="qwen3", input="Hello", reasoning={"effort": "low"})
    assert plain.output[0].content[0].logprobs == []
    asked = client.responses.create(
        model="qwen3", input="Hello", include=["message.output_text.logprobs"], top_logprobs=2
    )
    part = asked.output[-1].content[0]
    assert "".join(entry.token for entry in part.logprobs) == part.text == SCRIPTED_ANSWER
    assert all(len(entry.top_logprobs) == 2 and entry.logprob <= 0 for entry in part.logprobs)
    assert asked.top_logprobs == 2
    only_include = client.responses.create(model="qwen3", input="Hello", include=["message.output_text.logprobs"])
    tokens = only_include.output[-1].content[0].logprobs
    assert [entry.token for entry in tokens] == [entry.token for entry in part.logprobs]
    assert all(entry.top_logprobs == [] for entry in tokens)
    events = list(client.responses.create(model="qwen3", input="Hello", top_logprobs=1, stream=True))
    for event in events:
        assert_valid("ResponseStreamEvent", event.model_dump(mode="json", exclude_unset=True))
    deltas = [entry for event in events if event.type == "response.output_text.delta" for entry in event.logprobs]
    assert "".join(entry.token for entry in deltas) == SCRIPTED_ANSWER
    done = next(event for event in events if event.type == "response.output_text.done")
    assert [entry.token for entry in done.logprobs] == [entry.token for entry in deltas]
    final = events[-1].response.output[-1].content[0]
    assert [entry.token for entry in final.logprobs] == [entry.token for entry in deltas]


@pytest.fixture(scope="module")
def plain_client(api: RunningApp) -> openai.OpenAI:
    return openai_client(api)
