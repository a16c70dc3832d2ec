"""LangChain (``langchain-openai``) against the running API: ``bind_tools`` with a tool round trip,
``with_structured_output`` (JSON schema and function calling), streamed tool calls. Run:
``.venv/bin/python -m pytest tests/app/test_api_langchain.py -q``.
"""

from __future__ import annotations

from typing import Literal

import pytest
from helpers.app import RunningApp
from pydantic import BaseModel, Field

from chatbot.authoring.modelgen import SCRIPTED_ANSWER

langchain_openai = pytest.importorskip("langchain_openai", reason="langchain-openai is in requirements-dev.txt")
messages_module = pytest.importorskip("langchain_core.messages")


class GetWeather(BaseModel):
    """The weather in a city."""

    city: Literal["Paris", "Tokyo"] = Field(description="The city.")
    unit: Literal["C", "F"]


class Verdict(BaseModel):
    """A yes/no verdict."""

    answer: Literal["yes", "no"]
    sure: bool


@pytest.fixture(scope="module")
def chat(demo_app: RunningApp):
    return langchain_openai.ChatOpenAI(
        base_url=demo_app.api_url + "/v1", api_key="x", model="qwen3", max_retries=0, timeout=120
    )


def test_bind_tools_and_a_tool_round_trip(chat) -> None:
    question = messages_module.HumanMessage("Weather in Paris?")
    called = chat.bind_tools([GetWeather], tool_choice="GetWeather").invoke([question])
    [call] = called.tool_calls
    assert call["name"] == "GetWeather" and GetWeather.model_validate(call["args"])
    result = messages_module.ToolMessage('{"temperature": 21}', tool_call_id=call["id"])
    answer = chat.bind_tools([GetWeather]).invoke([question, called, result])
    assert answer.content == SCRIPTED_ANSWER and not answer.tool_calls


def test_streamed_tool_calls_add_up(chat) -> None:
    chunks = list(chat.bind_tools([GetWeather], tool_choice="any").stream("Weather?"))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert [call["name"] for call in whole.tool_calls] == ["GetWeather"]


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(chat, method) -> None:
    verdict = chat.with_structured_output(Verdict, method=method).invoke("Is 7 prime?")
    assert isinstance(verdict, Verdict)
