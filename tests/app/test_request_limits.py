"""The server's bounds on one reply hold the same with the model loaded here and behind ``--backend``.

``--max-new-tokens-cap`` refuses a longer ``max_tokens`` (400), cuts "no max_tokens" (the room left) and
the web chat's slider to the cap; ``--max-generation-seconds`` ends a reply with finish reason "length".
The remote is a second copy of this app with no caps of its own (``demo_app``), so whatever holds
here is held by the front.
Run: ``.venv/bin/python -m pytest tests/app/test_request_limits.py -q``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from gradio_client import Client
from helpers.app import RunningApp, running_app
from helpers.clients import openai_client

from chatbot.chat.remote import RemoteBackend
from chatbot.chat.reply import ChatDone, stream_reply
from chatbot.engine.limits import ReplyLimits
from chatbot.errors import InvalidRequestError

CAP = 16
FORCED_LONG = {"extra_body": {"min_tokens": 7000}}  # end-of-turn suppressed: only a limit ends the reply
HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module", params=["local", "behind --backend"])
def capped(
    request: pytest.FixtureRequest, scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningApp]:
    """The app with ``--max-new-tokens-cap 16``: the model loaded here, or in front of an uncapped remote."""
    if request.param == "local":
        args = ["--model", str(scripted_fp8)]
    else:
        remote: RunningApp = request.getfixturevalue("demo_app")
        args = ["--backend", remote.api_url + "/v1"]
    with running_app([*args, "--max-new-tokens-cap", str(CAP)], tmp_path_factory.mktemp("capped") / "app.log") as app:
        yield app


def test_the_token_cap_holds_for_the_api_and_the_web_chat(capped: RunningApp) -> None:
    client = openai_client(capped)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="m", messages=HELLO, max_tokens=CAP + 1)
    assert refused.value.body["param"] == "max_tokens" and "--max-new-tokens-cap" in refused.value.body["message"]
    for asked in ({"max_tokens": CAP}, {}):  # no max_tokens: the room left, cut to the cap
        reply = client.chat.completions.create(model="m", messages=HELLO, **asked, **FORCED_LONG)
        assert reply.choices[0].finish_reason == "length", asked
        assert reply.usage.completion_tokens == CAP, asked
    # The web chat's slider asks for more than the cap: it is cut to it, not refused.
    page = Client(capped.ui_url, verbose=False)
    _, _, notice, record = page.predict(
        message="Hi", enable_thinking=False, max_new_tokens=4000, min_new_tokens=4000, api_name="/chat"
    )
    stats = json.loads(record)["messages"][-1]["stats"]
    assert notice == "" and stats["finish_reason"] == "length" and stats["new_tokens"] == CAP


def test_the_time_limit_ends_a_remote_reply_with_length(demo_app: RunningApp) -> None:
    limits = ReplyLimits(max_new_tokens_cap=7000, max_generation_seconds=0.5)
    backend = RemoteBackend(demo_app.api_url + "/v1", limits=limits)
    try:
        events = list(stream_reply(backend, HELLO, max_new_tokens=7000, min_new_tokens=7000))
        done = events[-1]
        assert isinstance(done, ChatDone) and done.finish_reason == "length" and done.stats["time_limited"]
        with pytest.raises(InvalidRequestError, match="max-new-tokens-cap"):  # refused here, nothing sent
            list(stream_reply(backend, HELLO, max_new_tokens=7001))
    finally:
        backend.close()
    demo_app.wait_until_idle()  # the front hung up: the remote stopped generating
