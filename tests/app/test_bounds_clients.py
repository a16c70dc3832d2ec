"""Every resource is charged to a real client: a made-up bearer token or a fresh session hash is no new one.

Without ``--api-key`` any bearer token is accepted: counted as a new client each, random tokens took
every queue place, and the next client got 429. In the web chat a new session hash is made up by the page:
a script minting them opened a thousand sessions and pushed every other tab's chat out of the server.
Probed over loopback; the intruder connects from 127.0.0.2, the well-behaved client from 127.0.0.1 (or the
other way round). Run: ``.venv/bin/python -m pytest tests/app/test_bounds_clients.py -q``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.app import RunningApp, start_app, stop_app

from chatbot.serve.session_quota import NEW_SESSION_BURST, NEW_SESSIONS_PER_MINUTE, SessionQuota

CLIENT_LIMIT = 2  # requests one client may have waiting
MAX_SESSIONS = 8
LONG = 4000  # tokens: a reply that runs for the whole test (cancelled when its stream is closed)


@pytest.fixture(scope="module")
def app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    args = ["--model", str(scripted_fp8), "--queue-size", "4", "--max-batch", "1"]
    args += ["--client-limit", str(CLIENT_LIMIT), "--max-sessions", str(MAX_SESSIONS)]
    running = start_app(args, tmp_path_factory.mktemp("logs") / "clients.log")
    try:
        yield running
    finally:
        stop_app(running)


def from_address(address: str, **options) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=60, **options)


def long_stream(client: httpx.Client, url: str, token: str) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": LONG, "min_tokens": LONG}
    request = client.build_request(
        "POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    return client.send(request, stream=True)


def test_made_up_bearer_tokens_are_one_client(app: RunningApp) -> None:
    intruder, other = from_address("127.0.0.2"), from_address("127.0.0.1")
    opened: list[httpx.Response] = []
    try:
        for _ in range(6):  # one runs, then more than the queue holds
            opened.append(long_stream(intruder, app.api_url, secrets.token_hex(8)))
        accepted = [response for response in opened if response.status_code == 200]
        assert len(accepted) <= 1 + CLIENT_LIMIT  # one running, CLIENT_LIMIT waiting: the same client each time
        assert any(response.status_code == 429 for response in opened)
        victim = long_stream(other, app.api_url, "x")
        opened.append(victim)
        assert victim.status_code == 200, victim.read()  # a queue place was left for another client
    finally:
        for response in opened:
            response.close()
        intruder.close()
        other.close()
    app.wait_until_idle()


def chat_record(page, text: str) -> dict:
    _, _, notice, record = page.predict(message=text, enable_thinking=False, max_new_tokens=16, api_name="/chat")
    assert not notice
    return json.loads(record)


def test_new_sessions_are_limited_and_never_push_out_another_clients_chat(app: RunningApp) -> None:
    from gradio_client import Client

    page = Client(app.ui_url, verbose=False)  # a well-behaved tab, from 127.0.0.1
    chat_record(page, "first question")
    statuses = []
    started = time.monotonic()
    with from_address("127.0.0.2") as intruder:  # one browser (cookie) minting session hashes
        assert intruder.get(app.ui_url + "/config").status_code == 200
        for _ in range(NEW_SESSION_BURST + 30):
            body = {"data": [], "session_hash": secrets.token_hex(6)}
            answer = intruder.post(app.ui_url + "/gradio_api/run/stop", json=body)
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                assert int(answer.headers["Retry-After"]) >= 1
                assert "Too many new chat tabs" in answer.json()["error"]["message"]
    refilled = (time.monotonic() - started) * NEW_SESSIONS_PER_MINUTE / 60
    assert NEW_SESSION_BURST <= statuses.count(200) <= NEW_SESSION_BURST + refilled + 1
    assert statuses.count(429) == len(statuses) - statuses.count(200)
    questions = [m["content"] for m in chat_record(page, "second question")["messages"] if m["role"] == "user"]
    assert questions == ["first question", "second question"]  # the server still held this tab's chat


def test_one_address_holds_at_most_its_share_of_sessions() -> None:
    quota = SessionQuota(max_sessions=4, burst=100)
    released = [quota.started("a", "browser", f"s{i}", now=0.0) for i in range(4)]
    assert released == [[], [], ["s0"], ["s1"]]  # its own least recently used, at half of the 4
    assert quota.used("a", "s2") == [] and quota.started("a", "browser", "s4", now=0.0) == ["s3"]
    assert quota.started("b", "other", "t0", now=0.0) == []  # another address is not touched
    limited = SessionQuota(max_sessions=100, burst=2, per_minute=60)
    limited.started("a", "browser", "s0", now=0.0)
    limited.started("a", "browser", "s1", now=0.0)
    assert limited.refusal("a", "another browser", now=0.0) is not None  # the address is out of new sessions
    assert limited.refusal("c", "browser", now=0.0) is not None  # and so is the browser, from any address
    assert limited.refusal("c", "another browser", now=0.0) is None
    assert limited.refusal("a", "browser", now=1.0) is None  # a second later: one more
