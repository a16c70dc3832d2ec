"""OpenAI's Responses API (``/v1/responses``) through the real ``openai`` package and the OpenAI Agents SDK.

The app runs the scripted model as users start it, so the exact thinking and answer are known;
constrained decoding makes it write a valid function call or schema-valid JSON. Every body and
stream event is validated against OpenAI's published schemas (``tests/spec``).
Run: ``.venv/bin/python -m pytest tests/app/test_api_responses.py -q``.
"""

from __future__ import annotations

import json
from typing import Literal

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
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == SCRIPTED_ANSWER
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0


def test_reasoning_effort_switches_thinking(client) -> None:
    thought = client.responses.create(model="qwen3", input="Hello", reasoning={"effort": "high"})
    assert [item.type for item in thought.output] == ["reasoning", "message"]
    assert thought.output[0].content[0].text == SCRIPTED_THINKING and thought.output_text == SCRIPTED_ANSWER
    quick = client.responses.create(model="qwen3", input="Hello", reasoning={"effort": "low"})
    assert [item.type for item in quick.output] == ["message"]


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
    assert [item.type for item in events[-1].response.output] == ["function_call"]


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


@pytest.fixture(scope="module")
def plain_client(api: RunningApp) -> openai.OpenAI:
    return openai_client(api)
