"""The web chat's Continue and single-message Delete through ``gradio_client`` (the scripted model, exact words).

.venv/bin/python -m pytest tests/app/test_ui_continue.py -q
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from helpers.app import RunningApp, running_app
from transformers import AutoTokenizer

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING
from chatbot.chat.prompt import encode
from chatbot.serve.ui_render import is_stats_message


def text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, list):  # gradio_client gives [{"type": "text", "text": ...}]
        return "".join(part.get("text", "") for part in content)
    return content


def last_reply(chat: list[dict[str, Any]]) -> dict[str, str]:
    """The thinking, answer and stats line (tags taken out) of the chat's last reply."""
    last_user = max(i for i, message in enumerate(chat) if message["role"] == "user")
    parts = {"thinking": "", "answer": "", "stats": ""}
    for message in chat[last_user + 1 :]:
        if (message.get("metadata") or {}).get("title"):
            parts["thinking"] = text_of(message)
        elif is_stats_message(message):
            parts["stats"] = html.unescape(re.sub(r"<[^>]+>", "", text_of(message)))
        else:
            parts["answer"] = text_of(message)
    return parts


def tokens_in(stats: str) -> int:
    return int(re.search(r"(?<![\d.])(\d+) tokens?(?!/)", stats).group(1))


@pytest.fixture(scope="module")
def scripted_app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    log = tmp_path_factory.mktemp("ui-continue") / "app.log"
    with running_app(["--model", str(scripted_fp8)], log, api=False) as app:
        yield app


@pytest.fixture
def client(scripted_app: RunningApp) -> Client:
    return Client(scripted_app.ui_url, verbose=False)


def test_continue_grows_the_cut_answer_into_the_whole_reply(client: Client) -> None:
    chat, _, _, _ = client.predict(message="Hi", enable_thinking=True, max_new_tokens=16, api_name="/chat")
    cut = last_reply(chat)
    assert "cut at the max new tokens limit" in cut["stats"] and "Continue ▸" in cut["stats"]
    assert cut["thinking"] == SCRIPTED_THINKING and SCRIPTED_ANSWER.startswith(cut["answer"])
    assert cut["answer"] != SCRIPTED_ANSWER
    chat, _, notice, record = client.predict(enable_thinking=True, api_name="/continue_reply")
    grown = last_reply(chat)
    assert notice == "" and len([m for m in chat if m["role"] == "user"]) == 1  # the same message grew
    assert grown["answer"] == SCRIPTED_ANSWER and grown["thinking"] == SCRIPTED_THINKING
    assert "Continue" not in grown["stats"] and "cut" not in grown["stats"]
    assert tokens_in(grown["stats"]) > tokens_in(cut["stats"]) == 16
    saved = json.loads(record)["messages"]
    assert len(saved) == 2 and saved[-1]["content"] == SCRIPTED_ANSWER
    assert saved[-1]["stats"]["new_tokens"] == tokens_in(grown["stats"])


def test_continue_is_refused_saying_why_when_the_context_is_full(client: Client, scripted_fp8: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(scripted_fp8))

    def prompt_tokens(words: int) -> int:
        return len(encode(tokenizer, [{"role": "user", "content": "word " * words}], False))

    low, high = 1, 8192  # the most words whose question leaves room for a 16-token reply, and little more
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if prompt_tokens(middle) <= 8192 - 16 - 4 else (low, middle - 1)
    words = low
    chat, _, notice, _ = client.predict(
        message="word " * words, enable_thinking=False, max_new_tokens=16, api_name="/chat"
    )
    assert notice == "" and "Continue ▸" in last_reply(chat)["stats"]
    _, _, notice, _ = client.predict(enable_thinking=False, api_name="/continue_reply")
    assert "fills the context window" in html.unescape(notice) and "new chat" in notice


def test_continue_without_a_cut_answer_says_so(client: Client) -> None:
    _, _, notice, _ = client.predict(enable_thinking=False, api_name="/continue_reply")
    assert "no answer to continue" in notice
