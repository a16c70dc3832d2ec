"""litellm against the running API: its exception classes and tool calls.

litellm pins ``openai<3``, so it is not in requirements-dev.txt (the suite uses openai 3.x); these
tests run where litellm is installed beside the project, e.g. in a virtual environment of its own
that also sees the project's packages. Run: ``python -m pytest tests/test_api_litellm.py -q``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RunningApp, start_app, stop_app

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of litellm's price list
litellm = pytest.importorskip("litellm", reason="litellm is not installed (it pins openai<3)")

KEY = "sk-litellm-test"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Tokyo"]}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def keyed_app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    app = start_app(["--model", str(scripted_fp8), "--api-key", KEY], tmp_path_factory.mktemp("logs") / "litellm.log")
    try:
        yield app
    finally:
        stop_app(app)


def complete(app: RunningApp, key: str = KEY, **kwargs):
    return litellm.completion(model="openai/qwen3", api_base=app.api_url + "/v1", api_key=key, num_retries=0, **kwargs)


def test_a_wrong_key_is_an_authentication_error(keyed_app) -> None:
    with pytest.raises(litellm.AuthenticationError):
        complete(keyed_app, key="wrong", messages=[{"role": "user", "content": "Hi"}])


def test_a_conversation_too_long_is_a_context_window_error(keyed_app) -> None:
    with pytest.raises(litellm.ContextWindowExceededError):  # what litellm's fallbacks act on
        complete(keyed_app, messages=[{"role": "user", "content": "word " * 9000}])


def test_tool_calls_through_litellm(keyed_app) -> None:
    reply = complete(
        keyed_app, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], tool_choice="required"
    )
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in {"Paris", "Tokyo"}
