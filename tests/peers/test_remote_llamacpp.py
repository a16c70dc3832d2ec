"""``--backend`` in front of llama.cpp's ``llama-server``, a real third-party OpenAI-compatible server.

llama-server serves a GGUF copy of the scripted checkpoint (made by llama.cpp's own converter), with
thinking in ``reasoning_content`` (``--reasoning-format deepseek``) or as raw ``<think>`` inside
``content`` (``--reasoning-format none``); through this app's API both come out the same, thinking
and answer apart and word for word the script. ``doctor --backend`` tells the two shapes apart. A
client hanging up on a long reply (random weights over Qwen3's vocabulary rarely end a reply) ends
llama-server's task: its log says "cancel task".
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.app import ROOT, WAIT_LIMIT_SECONDS, RunningApp, running_app
from helpers.clients import carries_text, openai_client
from helpers.llamacpp import running_llama_server
from helpers.qwen3 import fetch_qwen3_tokenizer

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING, make_model

# The first use builds llama.cpp when ./start.sh test has not (about 15 minutes on 2 cores): a bound, not a goal.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module", params=["deepseek", "none"])
def llama_front(
    request, llamacpp, scripted_gguf: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, object, RunningApp]]:
    """(reasoning format, llama-server, this app in front of it)."""
    folder = tmp_path_factory.mktemp(f"llama-{request.param}")
    with (
        running_llama_server(
            llamacpp, scripted_gguf["q8_0"], folder / "llama-server.log", "--jinja", "--reasoning-format", request.param
        ) as server,
        running_app(["--backend", server.url], folder / "front.log") as app,
    ):
        yield request.param, server, app


def stream(app: RunningApp, thinking: bool) -> tuple[str, str, str | None]:
    client = openai_client(app)
    reasoning = content = ""
    finish = None
    chunks = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": "Hello there"}],
        stream=True,
        extra_body={"chat_template_kwargs": {"enable_thinking": thinking}},
    )
    for chunk in chunks:
        if chunk.choices:
            delta = chunk.choices[0].delta
            reasoning += getattr(delta, "reasoning_content", None) or ""
            content += delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return reasoning, content, finish


def test_thinking_and_answer_come_apart_whatever_the_servers_format(llama_front) -> None:
    _, server, app = llama_front
    health = app.health()
    assert health["status"] == "ready" and health["backend"]["url"] == server.url
    reasoning, content, finish = stream(app, thinking=True)
    assert (reasoning.strip(), content.strip(), finish) == (SCRIPTED_THINKING, SCRIPTED_ANSWER, "stop")
    reasoning, content, finish = stream(app, thinking=False)
    assert (reasoning, content.strip(), finish) == ("", SCRIPTED_ANSWER, "stop")


def test_doctor_names_how_the_server_sends_thinking(llama_front) -> None:
    reasoning_format, server, _ = llama_front
    result = subprocess.run(
        [sys.executable, "-m", "chatbot", "doctor", "--backend", server.url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=WAIT_LIMIT_SECONDS,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    expected = "arrives in reasoning_content" if reasoning_format == "deepseek" else "inside content"
    assert expected in result.stdout


@pytest.fixture(scope="module")
def llama_random_front(llamacpp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, RunningApp]]:
    """llama-server on a random-weights GGUF (long replies), and this app in front of it."""
    folder = tmp_path_factory.mktemp("llama-random")
    checkpoint = make_model(folder / "random", tokenizer_dir=fetch_qwen3_tokenizer())
    gguf = llamacpp.convert(checkpoint, folder / "gguf", types=("f16",))["f16"]
    with (
        running_llama_server(llamacpp, gguf, folder / "llama-server.log", "--jinja") as server,
        running_app(["--backend", server.url], folder / "front.log") as app,
    ):
        yield server, app


def test_a_client_hanging_up_ends_llama_servers_task(llama_random_front) -> None:
    server, app = llama_random_front
    client = openai_client(app)
    chunks = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Talk."}], stream=True, max_tokens=4000
    )
    received = 0
    for chunk in chunks:
        received += carries_text(chunk)
        if received == 5:
            break
    chunks.close()
    app.wait_for_log("the client disconnected mid-stream; generation stopped")
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    # llama-server logs "cancel task", then the slot's release with the tokens it holds (prompt + reply).
    while "cancel task" not in server.log() or not re.search(r"stop processing: n_tokens = \d+", server.log()):
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.1)
    made = [int(n) for n in re.findall(r"stop processing: n_tokens = (\d+)", server.log())]
    assert made[-1] < 4000
