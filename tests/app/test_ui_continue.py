"""The web chat's Continue and single-message Delete through ``gradio_client`` (the scripted model, exact words).

.venv/bin/python -m pytest tests/app/test_ui_continue.py -q
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client
from helpers.app import RunningApp, running_app
from helpers.web_chat import last_reply, text_of
from transformers import AutoTokenizer

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING
from chatbot.chat.conversation import Conversation, Turn
from chatbot.chat.prompt import encode
from chatbot.serve.ui_delete import delete_turn
from chatbot.serve.ui_session import from_saved_form, saved_form
from chatbot.serve.ui_versions import add_version, versions_before_change


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


# --- deleting one message ---------------------------------------------------------------------------------


def chat_of(*texts: str) -> Conversation:
    """A chat of alternating questions and answers."""
    roles = ("user", "assistant")
    return Conversation("", [Turn(roles[i % 2], text) for i, text in enumerate(texts)])


def test_deleting_a_message_takes_out_that_message_only() -> None:
    chat = chat_of("Q1", "A1", "Q2", "A2")
    delete_turn(chat, 1)
    assert [t.content for t in chat.turns] == ["Q1", "Q2", "A2"]
    delete_turn(chat, 0)
    assert [t.content for t in chat.turns] == ["Q2", "A2"]


def test_deleting_an_answer_takes_its_tool_results_along() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}
    chat = chat_of("What time is it?")
    chat.turns += [Turn("assistant", "", tool_calls=[call]), Turn("tool", "12:00", tool_call_id="c1")]
    chat.turns.append(Turn("assistant", "Noon."))
    delete_turn(chat, 1)
    assert [(t.role, t.content) for t in chat.turns] == [("user", "What time is it?"), ("assistant", "Noon.")]


def test_deleting_a_message_with_versions_deletes_the_version_shown_and_keeps_the_others() -> None:
    chat = chat_of("Q1", "First answer")
    versions = versions_before_change(chat, 1)
    chat.turns[1] = Turn("assistant", "Second answer")
    add_version(chat.turns[1], versions)
    chat.turns += [Turn("user", "Q2"), Turn("assistant", "A2")]  # the line after the second answer
    done = delete_turn(chat, 1)
    assert "1 left" in done
    assert [t.content for t in chat.turns] == ["Q1", "First answer"] and chat.turns[1].versions == []
    round_trip = from_saved_form(saved_form(chat), "")
    assert [t.content for t in round_trip.turns] == ["Q1", "First answer"]


def test_delete_message_updates_the_chat_the_record_and_the_meter(client: Client) -> None:
    client.predict(message="First question", enable_thinking=False, api_name="/chat")
    chat, _, _, _ = client.predict(message="Second question", enable_thinking=False, api_name="/chat")
    meter_before = client.predict(message="", enable_thinking=False, api_name="/context_meter")
    first_answer = next(i for i, m in enumerate(chat) if m["role"] == "assistant")
    chat, record, notice = client.predict(request_text=json.dumps({"index": first_answer}), api_name="/delete_message")
    assert notice == ""
    assert [text_of(m) for m in chat if m["role"] == "user"] == ["First question", "Second question"]
    assert [m["role"] for m in json.loads(record)["messages"]] == ["user", "user", "assistant"]
    meter_after = client.predict(message="", enable_thinking=False, api_name="/context_meter")
    used = [int(re.search(r"([\d,]+) /", text).group(1).replace(",", "")) for text in (meter_before, meter_after)]
    assert used[1] < used[0]
    _, _, notice = client.predict(request_text=json.dumps({"index": 99}), api_name="/delete_message")
    assert "no longer in the chat" in notice
