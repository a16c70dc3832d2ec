"""The chats the web chat holds stay within a total: past ``--session-memory-mb`` the least recently used
idle tab's chat is let go (its browser keeps its copy), however many tabs ``--max-sessions`` allows.

Seventy-five imported chats of short messages, each under ``--max-chat-mb``, took the server from 1.15 to
5.26 GB. Probed through the page's own API with a 1 MB budget and two tabs importing chats of about 0.6 MB
each. Run: ``.venv/bin/python -m pytest tests/app/test_bounds_session_memory.py -q``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.app import RunningApp, start_app, stop_app

from chatbot.serve.session_budget import PER_MESSAGE_BYTES

MESSAGES = 300
TEXT = "w" * (PER_MESSAGE_BYTES - 24)  # a message costs about twice its text once held


@pytest.fixture(scope="module")
def app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    args = ["--model", str(scripted_fp8), "--session-memory-mb", "1"]
    running = start_app(args, tmp_path_factory.mktemp("logs") / "session_memory.log", api=False)
    try:
        yield running
    finally:
        stop_app(running)


def questions(page) -> list[str]:
    _, _, notice, record = page.predict(message="next", enable_thinking=False, max_new_tokens=16, api_name="/chat")
    assert not notice
    return [m["content"] for m in json.loads(record)["messages"] if m["role"] == "user"]


def test_the_oldest_idle_chat_is_let_go_past_the_budget(app: RunningApp, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} {TEXT}"} for i in range(MESSAGES)]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"format": "qwen3-chat-conversation", "messages": many}), encoding="utf-8")
    older, newer = Client(app.ui_url, verbose=False), Client(app.ui_url, verbose=False)
    for page in (older, newer):
        _, notice, *_ = page.predict(handle_file(str(path)), api_name="/import_conversation")
        assert not notice
    app.wait_for_log("let go of 1 least recently used")
    assert len(questions(newer)) == MESSAGES // 2 + 1  # the newer chat is still held
    assert questions(older) == ["next"]  # the older one was let go: a fresh chat (the page is told to reload)
