"""The chats the web chat holds stay within a total: past ``--session-memory-mb`` the least recently used
idle tab's chat is let go (its browser keeps its copy), however many tabs ``--max-sessions`` allows.

Seventy-five imported chats of short messages, each under ``--max-chat-mb``, took the server from 1.15 to
5.26 GB. Probed through the page's own API with a 1 MB budget and two tabs importing chats of about 1 MB
each (charged). Run: ``.venv/bin/python -m pytest tests/app/test_bounds_session_memory.py -q``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.app import RunningApp, running_app, start_app, stop_app

from chatbot.serve.session_budget import PER_MESSAGE_BYTES

MESSAGES = 120
TEXT = "w" * (PER_MESSAGE_BYTES - 24)  # a message is charged about 4 x twice its text: ~1 MB a chat


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


TABS = 24  # under the 30 new sessions one address may start at once
BUDGET_MB = 64


def test_many_tabs_at_the_chat_limits_leave_memory_within_the_budget_and_the_chat_answering(
    scripted_fp8: Path, tmp_path: Path
) -> None:
    """The issue's probe within today's per-chat limits: 24 tabs each import a chat at the limits (2,000
    messages, 2 MB). Without the budget RSS grew by 425 MB (17.7 MB a tab); with a 64 MB budget it grows by
    less than 200 MB, and a new tab is answered after."""
    from gradio_client import Client, handle_file

    from chatbot.serve.ui_session import MAX_CHAT_MESSAGES

    text = "w" * (2 * 2**20 // MAX_CHAT_MESSAGES - 64)
    largest = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} {text}"} for i in range(MAX_CHAT_MESSAGES)
    ]
    path = tmp_path / "largest.json"
    path.write_text(json.dumps({"format": "qwen3-chat-conversation", "messages": largest}), encoding="utf-8")
    # --max-sessions given, so that only the memory budget bounds what the server holds.
    args = ["--model", str(scripted_fp8), "--session-memory-mb", str(BUDGET_MB), "--max-sessions", "1000"]
    with running_app(args, tmp_path / "probe.log", api=False) as app:
        warm = Client(app.ui_url, verbose=False)
        warm.predict(handle_file(str(path)), api_name="/import_conversation")  # the import path's own allocations
        before = app.rss()
        for _ in range(TABS):
            _, notice, *_ = Client(app.ui_url, verbose=False).predict(
                handle_file(str(path)), api_name="/import_conversation"
            )
            assert not notice
        app.wait_for_log("let go of")
        time.sleep(2.5)  # one more sweep: a bound, the assertion below holds however long it waits
        grown = app.rss() - before
        assert grown < 200 * 2**20, f"RSS grew by {grown / 2**20:.0f} MB"
        assert questions(Client(app.ui_url, verbose=False)) == ["next"]
