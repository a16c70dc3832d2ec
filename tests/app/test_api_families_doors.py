"""The Messages and Responses APIs behind the doors chat completions has: the API key (``x-api-key`` or
``Authorization: Bearer``), the body size limit, the small ``--responses-store`` and who may read a kept
reply, and ``--backend`` (this app in front of a second copy of it: the requests are translated to the
remote's chat completions).

Run: ``.venv/bin/python -m pytest tests/app/test_api_families_doors.py -q``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from helpers.app import RunningApp, running_app
from helpers.clients import openai_client
from helpers.tools import WEATHER

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING

KEY = "sk-test-4b1d0e77a2"
HELLO = [{"role": "user", "content": "Hello"}]


def claude_client(app: RunningApp, **options) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=app.api_url, max_retries=0, timeout=120, **options)


@pytest.fixture(scope="module")
def keyed(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    folder = tmp_path_factory.mktemp("keyed-families")
    args = ["--model", str(scripted_fp8), "--api-key", KEY, "--max-request-mb", "0.01", "--responses-store", "1"]
    with running_app(args, folder / "app.log") as app:
        yield app


def test_the_key_comes_as_x_api_key_or_bearer(keyed) -> None:
    message = claude_client(keyed, api_key=KEY).messages.create(model="qwen3", max_tokens=64, messages=HELLO)
    assert message.content[0].text == SCRIPTED_ANSWER
    bearer = claude_client(keyed, auth_token=KEY).messages.create(model="qwen3", max_tokens=64, messages=HELLO)
    assert bearer.content[0].text == SCRIPTED_ANSWER
    with pytest.raises(anthropic.AuthenticationError) as wrong:
        claude_client(keyed, api_key="sk-wrong").messages.create(model="qwen3", max_tokens=64, messages=HELLO)
    assert wrong.value.body["type"] == "error" and wrong.value.body["error"]["type"] == "authentication_error"
    missing = httpx.post(keyed.api_url + "/v1/messages/count_tokens", json={"messages": HELLO}, timeout=30)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert (
        openai_client(keyed, api_key=KEY).responses.create(model="qwen3", input="Hello").output_text == SCRIPTED_ANSWER
    )
    with pytest.raises(openai.AuthenticationError):
        openai_client(keyed, api_key="sk-wrong").responses.create(model="qwen3", input="Hello")


def test_the_body_limit_holds_and_the_store_keeps_the_latest_reply(keyed) -> None:
    too_large = [{"role": "user", "content": "word " * 4000}]
    with pytest.raises(anthropic.APIStatusError) as refused:
        claude_client(keyed, api_key=KEY).messages.create(model="qwen3", max_tokens=64, messages=too_large)
    assert refused.value.status_code == 413 and refused.value.body["error"]["type"] == "request_too_large"
    client = openai_client(keyed, api_key=KEY)
    first = client.responses.create(model="qwen3", input="Hello")
    second = client.responses.create(model="qwen3", input="Hello", previous_response_id=first.id)
    assert second.output_text == SCRIPTED_ANSWER
    with pytest.raises(openai.BadRequestError, match="latest 1 replies"):  # --responses-store 1: first is gone
        client.responses.create(model="qwen3", input="Hello", previous_response_id=first.id)


def test_a_kept_response_is_read_only_with_the_key_from_the_same_address(keyed) -> None:
    made = openai_client(keyed, api_key=KEY).responses.create(model="qwen3", input="Hello")
    url, bearer = f"{keyed.api_url}/v1/responses/{made.id}", {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(url, headers={"x-api-key": KEY}, timeout=60).json()["output"][-1]["id"] == made.output[-1].id
    assert httpx.get(url, headers={"Authorization": "Bearer sk-wrong"}, timeout=60).status_code == 401
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=60) as elsewhere:
        assert elsewhere.get(url, headers=bearer).status_code == 404
        assert elsewhere.delete(url, headers=bearer).status_code == 404
        assert elsewhere.get(url + "/input_items", headers=bearer).status_code == 404
    deleted = httpx.delete(url, headers=bearer, timeout=60)
    assert deleted.json() == {"id": made.id, "object": "response", "deleted": True}
    assert httpx.get(url, headers=bearer, timeout=60).status_code == 404


def test_both_apis_work_behind_backend(front: RunningApp) -> None:
    claude = claude_client(front, api_key="x")
    thinking = {"type": "enabled", "budget_tokens": 512}
    message = claude.messages.create(model="qwen3", max_tokens=512, messages=HELLO, thinking=thinking)
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == SCRIPTED_THINKING and message.content[1].text == SCRIPTED_ANSWER
    assert claude.messages.count_tokens(model="qwen3", messages=HELLO).input_tokens > 0
    client = openai_client(front, validate=True)
    tool = {"type": "function", **WEATHER["function"]}
    asked = client.responses.create(model="qwen3", input="Weather?", tools=[tool], tool_choice="required")
    assert [item.type for item in asked.output] == ["reasoning", "function_call"]
    assert asked.output[1].name == "get_weather"
    assert client.responses.retrieve(asked.id).output[1].call_id == asked.output[1].call_id
    claude = claude_client(front, api_key="x")
    word = SCRIPTED_ANSWER.split()[2]
    stopped = claude.messages.create(model="qwen3", max_tokens=256, messages=HELLO, stop_sequences=[word])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == word  # from the remote's stop_reason
    with client.responses.stream(model="qwen3", input="Hello", reasoning={"effort": "high"}) as stream:
        final = stream.get_final_response()
    assert final.output[0].type == "reasoning" and final.output_text == SCRIPTED_ANSWER
