"""``--backend URL``: this app's API in front of a second instance of this app, through the openai SDK.

The second instance (the "remote") serves the scripted model and sends thinking in
``reasoning_content``; the front instance loads nothing and answers from it. Covered: what /health
and /v1/models say, streaming with the thinking split, Stop reaching the remote (its engine logs the
cancel), the remote's errors, the remote going away and coming back, ``Qwen3ChatBot(backend=...)``,
the terminal chat, ``doctor --backend`` and the web chat's Continue (joined as on the model's own server).
Run: ``.venv/bin/python -m pytest tests/app/test_remote.py -q``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from gradio_client import Client
from helpers.app import ROOT, WAIT_LIMIT_SECONDS, RunningApp, free_port, start_app, stop_app
from helpers.clients import carries_text, openai_client
from helpers.web_chat import last_reply

from chatbot import Qwen3ChatBot
from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING
from chatbot.chat.remote import RemoteBackend
from chatbot.chat.reply import AnswerDelta, ChatDone, QueuePosition, stream_reply
from chatbot.errors import ContextLengthError, QueueFullError

LONG_REPLY_TOKENS = 7000
LONG_REPLY = {"max_tokens": LONG_REPLY_TOKENS, "extra_body": {"min_tokens": LONG_REPLY_TOKENS}}
THINK = {"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}}
NO_THINK = {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def streamed(client: openai.OpenAI, **request: object) -> tuple[str, str, str | None]:
    """(reasoning, content, finish_reason) of a streamed request."""
    reasoning = content = ""
    finish = None
    for chunk in client.chat.completions.create(model="any", stream=True, **request):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    return reasoning, content, finish


def test_health_and_models_say_what_serves(front: RunningApp, remote: RunningApp) -> None:
    health = front.health()
    remote_name = httpx.get(remote.api_url + "/v1/models").json()["data"][0]
    assert health["status"] == "ready" and health["precision"] is None
    backend = health["backend"]
    assert backend["url"] == remote.api_url + "/v1" and backend["reachable"] is True
    assert backend["model"] == remote_name["id"] == health["model"]
    assert backend["precision"] == "fp8"  # stated by the operator, shown as such
    # The remote (this app) reports its context as vLLM does; the front passes it on.
    assert backend["max_model_len"] == remote_name["max_model_len"] > 0
    card = openai_client(front).models.list().data[0]
    assert card.id == remote_name["id"] and card.max_model_len == remote_name["max_model_len"]


def test_thinking_streams_apart_and_matches_the_remote(front: RunningApp, remote: RunningApp) -> None:
    request = {"messages": ask("Hello!"), "seed": 7, **THINK}
    direct = streamed(openai_client(remote), **request)
    through = streamed(openai_client(front), **request)
    reasoning, content, finish = through
    assert reasoning and content and finish == "stop"
    assert "<think>" not in content and "</think>" not in content
    assert through == direct


def test_without_thinking_everything_is_the_answer(front: RunningApp) -> None:
    reasoning, content, finish = streamed(openai_client(front), messages=ask("Hello!"), **NO_THINK)
    assert reasoning == "" and content and finish == "stop"
    reply = openai_client(front).chat.completions.create(model="any", messages=ask("Hello!"), seed=3, **THINK)
    message = reply.choices[0].message
    assert message.content and getattr(message, "reasoning_content", None)
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0


def test_a_client_hanging_up_cancels_the_remote_request(front: RunningApp, remote: RunningApp) -> None:
    before = len(remote.cancelled_generations())
    stream = openai_client(front).chat.completions.create(model="any", messages=ask("Talk."), stream=True, **LONG_REPLY)
    received = 0
    for chunk in stream:
        received += carries_text(chunk)
        if received == 5:
            break
    stream.close()
    front.wait_for_log("the client disconnected mid-stream; generation stopped")
    # The front closed its stream to the remote, and the remote's engine stopped the generation.
    made, most = remote.next_cancelled_generation(before)
    assert most == LONG_REPLY_TOKENS and made < LONG_REPLY_TOKENS
    remote.wait_until_idle()


def test_the_remotes_refusals_reach_the_client(front: RunningApp) -> None:
    # Our own checks run first (a 400 before anything is sent) ...
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(front).chat.completions.create(model="any", messages=ask("hi"), temperature=5)
    assert "temperature" in caught.value.message
    # ... and what only the remote can judge comes back in its words: a conversation past its context.
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(front).chat.completions.create(model="any", messages=ask("word " * 40000), max_tokens=8)
    assert caught.value.code == "context_length_exceeded"


def test_remote_going_away_and_coming_back(front: RunningApp, remote: RunningApp, remote_ports, scripted_fp8) -> None:
    stop_app(remote)
    client = openai_client(front)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="any", messages=ask("Anyone there?"))
    assert caught.value.status_code == 503 and "cannot be reached" in caught.value.message
    with pytest.raises(openai.InternalServerError):
        streamed(client, messages=ask("Anyone there?"))
    health = httpx.get(front.api_url + "/health", timeout=30)
    assert health.status_code == 503
    assert health.json()["status"] == "failed" and health.json()["backend"]["reachable"] is False
    assert "cannot be reached" in health.json()["error"]

    back = start_app(["--model", str(scripted_fp8)], remote.log_path.with_name("remote-again.log"), ports=remote_ports)
    remote.process = back.process  # the module fixture stops whichever process holds the ports
    remote.log_path = back.log_path
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS  # the front retries with backoff (30 s at most)
    while front.health()["status"] != "ready":
        assert time.monotonic() < deadline, front.log()[-2000:]
        time.sleep(0.5)
    assert streamed(client, messages=ask("Back?"))[2] == "stop"


def test_python_bot_over_the_remote(front: RunningApp, remote: RunningApp) -> None:
    bot = Qwen3ChatBot(backend=remote.api_url + "/v1")
    try:
        assert remote.api_url in bot.describe() and "reachable" in bot.describe()
        first = bot.chat("Hello!", enable_thinking=True)
        assert first["thinking"] and first["answer"] and first["finish_reason"] == "stop"
        assert "</think>" not in first["answer"]
        bot.chat("And again?")
        history = bot.get_history()
        assert [turn["role"] for turn in history] == ["user", "assistant"] * 2
        assert history[1]["content"] == first["answer"] and history[1]["thinking"] == first["thinking"]
        replies = bot.generate_batch(["One", "Two"], max_new_tokens=8)
        assert [reply["finish_reason"] in ("stop", "length") for reply in replies] == [True, True]
    finally:
        bot.close()


def test_terminal_chat_over_the_remote(remote: RunningApp) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatbot", "chat", "--backend", remote.api_url + "/v1"],
        input="Hello!\n/quit\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=WAIT_LIMIT_SECONDS,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "remote" in out and remote.api_url in out
    assert "thinking:" in out and "answer:" in out and "[stop;" in out


def test_doctor_checks_a_remote(remote: RunningApp) -> None:
    command = [sys.executable, "-m", "chatbot", "doctor", "--backend", remote.api_url + "/v1"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=WAIT_LIMIT_SECONDS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reachable" in result.stdout and "one-token chat completed" in result.stdout
    assert "reasoning_content" in result.stdout and "No problems found." in result.stdout

    dead = f"http://127.0.0.1:{free_port()}/v1"
    result = subprocess.run(
        [sys.executable, "-m", "chatbot", "doctor", "--backend", dead],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=WAIT_LIMIT_SECONDS,
    )
    assert result.returncode == 1 and "cannot be reached" in result.stdout


def test_requests_beyond_the_slots_wait_their_turn_then_are_refused(remote: RunningApp) -> None:
    backend = RemoteBackend(remote.api_url + "/v1", max_batch=1, queue_size=1)
    try:
        assert backend.load().reachable
        stop_first, stop_second = threading.Event(), threading.Event()
        long = {"max_new_tokens": 4000, "min_new_tokens": 4000}
        first = stream_reply(backend, ask("Talk."), cancel=stop_first, **long)
        next(event for event in first if isinstance(event, AnswerDelta))  # it holds the one slot now
        second = stream_reply(backend, ask("Me too."), cancel=stop_second)
        assert next(second) == QueuePosition(1)
        with pytest.raises(QueueFullError):
            next(stream_reply(backend, ask("And me.")))
        stop_second.set()  # leaves the queue without reaching the server
        done = list(second)[-1]
        assert isinstance(done, ChatDone) and done.finish_reason == "cancelled" and done.full_response == ""
        stop_first.set()
        done = list(first)[-1]
        assert isinstance(done, ChatDone) and done.finish_reason == "cancelled" and done.answer
        assert backend.occupancy() == {"running": 0, "waiting": 0, "paused": 0, "max_batch": 1}
        remote.wait_until_idle()
        assert remote.cancelled_generations()[-1][1] == 4000
    finally:
        backend.close()


def test_the_oldest_turns_make_room_as_for_a_local_model(remote: RunningApp) -> None:
    context = httpx.get(remote.api_url + "/v1/models").json()["data"][0]["max_model_len"]
    long = "word " * (context // 3)  # each turn a good part of the server's context
    history = [{"role": "system", "content": "Be brief."}]
    for _ in range(3):
        history += [{"role": "user", "content": long}, {"role": "assistant", "content": long}]
    history.append({"role": "user", "content": "Hello!"})
    backend = RemoteBackend(remote.api_url + "/v1")
    try:
        done = list(stream_reply(backend, history, max_new_tokens=16))[-1]
        assert isinstance(done, ChatDone) and done.finish_reason in ("stop", "length") and done.answer
        assert done.dropped_messages >= 2 and done.dropped_messages % 2 == 0  # whole turns, oldest first
        with pytest.raises(ContextLengthError):  # the API's rule: nothing is dropped
            list(stream_reply(backend, history, max_new_tokens=16, strict_context=True))
    finally:
        backend.close()


@pytest.mark.parametrize("thinking", [True, False], ids=["thinking", "no-thinking"])
def test_web_chat_continue_over_the_remote_writes_what_the_model_wrote(
    front: RunningApp, remote: RunningApp, thinking: bool
) -> None:
    """Continue behind --backend joins the continuation exactly (its leading space kept), as on the model's server."""
    replies = []
    for app in (remote, front):  # the model's own server first: what Continue gives there is what the model wrote
        client = Client(app.ui_url, verbose=False)
        chat, *_ = client.predict(message="Hi", enable_thinking=thinking, max_new_tokens=16, api_name="/chat")
        assert "Continue" in last_reply(chat)["stats"]
        chat, _, notice, record = client.predict(enable_thinking=thinking, api_name="/continue_reply")
        assert notice == ""
        shown = last_reply(chat)
        replies.append(((shown["thinking"], shown["answer"]), json.loads(record)["messages"][-1]))
    (local_shown, local_saved), (front_shown, front_saved) = replies
    assert local_shown == (SCRIPTED_THINKING if thinking else "", SCRIPTED_ANSWER)
    assert front_shown == local_shown
    assert front_saved["content"] == local_saved["content"] == SCRIPTED_ANSWER
    assert front_saved.get("thinking", "") == local_saved.get("thinking", "")
