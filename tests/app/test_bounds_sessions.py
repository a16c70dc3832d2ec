"""A web chat session's chat is bounded in bytes and in messages however it grows: imported, or typed.

Tens of thousands of short messages fit in ``--max-chat-mb`` but cost the server about a kilobyte each
once held, and a chat typed in long messages grew past the limit that imports obey. Probed through the
page's own API (``gradio_client``) on the shared demo app. Run:
``.venv/bin/python -m pytest tests/test_bounds_sessions.py -q``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.app import RunningApp, start_app, stop_app

from chatbot.serve.ui_session import MAX_CHAT_MESSAGES, check_chat_size, count_messages

CHAT_MB = 2.0  # the demo app's --max-chat-mb (the default)
SMALL_CHAT_MB = 0.05  # typed messages must fit the tiny model's context: a small limit is reached in a few


@pytest.fixture(scope="module")
def small_chats(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    args = ["--model", str(scripted_fp8), "--max-chat-mb", str(SMALL_CHAT_MB)]
    app = start_app(args, tmp_path_factory.mktemp("logs") / "small_chats.log", api=False)
    try:
        yield app
    finally:
        stop_app(app)


def test_a_chat_of_many_short_messages_is_refused_on_import(demo_app: RunningApp, tmp_path: Path) -> None:
    import psutil
    from gradio_client import Client, handle_file

    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(3 * MAX_CHAT_MESSAGES)]
    chat = {"format": "qwen3-chat-conversation", "title": "many", "messages": many}
    path = tmp_path / "many.json"
    path.write_text(json.dumps(chat), encoding="utf-8")
    assert path.stat().st_size < CHAT_MB * 2**20  # within the byte limit: the count is what refuses it
    page = Client(demo_app.ui_url, verbose=False)
    process = psutil.Process(demo_app.process.pid)
    before = process.memory_info().rss
    shown, notice, *_ = page.predict(handle_file(str(path)), api_name="/import_conversation")
    assert f"{3 * MAX_CHAT_MESSAGES:,} messages" in notice and f"at most {MAX_CHAT_MESSAGES:,}" in notice
    assert shown == {"__type__": "update"}  # nothing was opened
    assert process.memory_info().rss - before < 100 * 2**20


def test_a_chat_typed_in_long_messages_stops_growing_at_the_limit(small_chats: RunningApp) -> None:
    from gradio_client import Client

    page = Client(small_chats.ui_url, verbose=False)
    long_message = "word " * 1000
    refused = ""
    largest = 0
    for _ in range(int(SMALL_CHAT_MB * 2**20 / len(long_message)) + 4):  # enough to pass the limit by far
        _, box, notice, record = page.predict(
            message=long_message, enable_thinking=False, max_new_tokens=16, api_name="/chat"
        )
        if notice:
            refused = notice
            assert box == long_message  # the text stays in the box
            break
        largest = max(largest, len(record.encode()))
    assert "Start a new chat" in refused and f"at most {SMALL_CHAT_MB:g} MB" in refused
    assert largest <= SMALL_CHAT_MB * 2**20 + 4 * 1024  # within the limit, give or take one short reply


def test_versions_count_as_messages() -> None:
    versions = [{"role": "assistant", "content": "a", "after": [{"role": "user", "content": "q"}] * 5}] * 3
    items = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "versions": versions}]
    assert count_messages(items) == 2 + 15
    check_chat_size({"messages": items}, CHAT_MB)
