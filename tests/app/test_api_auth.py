"""The API key: ``python app.py --api-key-file FILE`` (or ``--api-key KEY``) makes every /v1 request need
``Authorization: Bearer KEY``.

Run: ``.venv/bin/python -m pytest tests/app/test_api_auth.py -q``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from helpers.app import RunningApp, running_app
from helpers.clients import openai_client
from helpers.openai_spec import assert_valid

from chatbot.authoring.modelgen import SCRIPTED_ANSWER

KEY = "sk-test-7f3a9c51e2"
HELLO = {"model": "qwen3", "messages": [{"role": "user", "content": "Hello"}]}
SERVED = "qwen3-0.6b-local"


@pytest.fixture(scope="module")
def keyed_api(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    folder = tmp_path_factory.mktemp("keyed")
    (folder / "api-key").write_text(KEY + "\n")  # from a file, so the key never shows in `ps`
    with running_app(
        ["--model", str(scripted_fp8), "--api-key-file", str(folder / "api-key"), "--served-model-name", SERVED],
        folder / "keyed.log",
    ) as app:
        yield app


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert_valid("ErrorResponse", response.json())
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_api_key" and "--api-key" in error["message"]
    assert error["type"] == "authentication_error"  # what OpenAI sends; litellm maps it to AuthenticationError
    assert KEY not in response.text


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}],
    ids=["no header", "wrong key", "not bearer", "key with a suffix"],
)
def test_requests_without_the_key_get_401(keyed_api, headers) -> None:
    assert_refused(httpx.post(keyed_api.api_url + "/v1/chat/completions", json=HELLO, headers=headers))
    assert_refused(httpx.get(keyed_api.api_url + "/v1/models", headers=headers))


def test_the_openai_client_with_the_key_gets_answers(keyed_api) -> None:
    client = openai_client(keyed_api, api_key=KEY)
    reply = client.chat.completions.create(model="qwen3", messages=HELLO["messages"])
    assert reply.choices[0].message.content == SCRIPTED_ANSWER
    streamed = client.chat.completions.create(model="qwen3", messages=HELLO["messages"], stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == SCRIPTED_ANSWER
    assert [model.id for model in client.models.list().data] == [SERVED]  # --served-model-name
    assert client.models.retrieve(SERVED).id == SERVED and reply.model == SERVED


def test_the_openai_client_with_a_wrong_key_gets_an_authentication_error(keyed_api) -> None:
    client = openai_client(keyed_api, api_key="sk-wrong")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="qwen3", messages=HELLO["messages"])


def test_health_says_only_the_status_without_the_key_and_the_key_is_never_logged(keyed_api) -> None:
    open_health = httpx.get(keyed_api.api_url + "/health").json()
    assert open_health == {"status": "ready"}  # no model path, memory or precision for strangers
    full = httpx.get(keyed_api.api_url + "/health", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert full["status"] == "ready" and full["precision"]["label"] and full["queue"]["size"] >= 1
    assert KEY not in keyed_api.log()


def test_the_schema_and_docs_need_the_key_and_offer_bearer_authentication(keyed_api) -> None:
    assert httpx.get(keyed_api.api_url + "/openapi.json").status_code == 401
    assert httpx.get(keyed_api.api_url + "/docs").status_code == 404
    schema = httpx.get(keyed_api.api_url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert {"type": "http", "scheme": "bearer"}.items() <= next(
        iter(schema["components"]["securitySchemes"].values())
    ).items()
