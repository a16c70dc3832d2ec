"""The web UI: its pure pieces, then the running app through ``gradio_client``, as a program would use it.

.venv/bin/python -m pytest tests/app/test_ui.py -q

Two apps are started the way users start them (``python app.py --model PATH``), on free ports and
without the API: one on the scripted model (exact thinking and answer text), one on the random
model with a login and a queue of one; replies run long through the "Min new tokens" control
enough to be stopped and to queue behind each other.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AuthenticationError
from helpers.app import WAIT_LIMIT_SECONDS, RunningApp, running_app
from helpers.web_chat import reply_parts, text_of

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING
from chatbot.chat.reply import AnswerDelta, ChatDone, Conversation, QueuePosition, ThinkingDelta, Turn
from chatbot.chat.thinking import split_thinking
from chatbot.errors import ChatbotError
from chatbot.model.loader import load_model
from chatbot.serve.ui_handlers import STREAM_INTERVAL_SECONDS, stream_interval
from chatbot.serve.ui_render import LiveReply, conversation_messages, indexed_messages, is_stats_message, shown_markdown
from chatbot.serve.ui_session import (
    StopSignals,
    from_saved_form,
    max_new_tokens_bound,
    pending_exchange,
    sampling_kwargs,
    saved_form,
)
from chatbot.serve.ui_versions import add_version, show_version, versions_before_change

LOGIN = ("tester", "s3cret")
UNCHANGED = {"__type__": "update"}  # what gradio_client shows for an output the handler left as it was
LONG_REPLY_TOKENS = 6000  # the random model writes ~500 tokens/s here: long enough to stop by hand


# --- helpers ----------------------------------------------------------------------------------------------


def user_texts(chat: list[dict[str, Any]]) -> list[str]:
    return [text_of(message) for message in chat if message["role"] == "user"]


def wait_for(condition, timeout: float = WAIT_LIMIT_SECONDS, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def last_chat(job) -> list[dict[str, Any]] | None:
    outputs = job.outputs()
    return outputs[-1][0] if outputs else None


def answer_so_far(job) -> str:
    chat = last_chat(job)
    return (reply_parts(chat)["answer"] or "") if chat else ""


def stats_so_far(job) -> str:
    chat = last_chat(job)
    return (reply_parts(chat)["stats"] or "") if chat else ""


def badge_fields(badge: str) -> dict[str, str]:
    def field(pattern: str) -> str:
        match = re.search(pattern, badge, re.DOTALL)
        assert match, f"{pattern!r} not in badge {badge!r}"
        return html.unescape(match.group(1))

    return {
        "label": field(r'class="qc-badge-mode">(.*?)</span>'),
        "device": field(r'class="qc-badge-device">(.*?) · weights'),
        "weights": field(r" · weights (.*?)</span>"),
        "reason": field(r'class="qc-badge-reason">(.*?)</div>'),
    }


# --- pure pieces ------------------------------------------------------------------------------------------


def test_only_the_cpp_fence_is_renamed_for_the_page() -> None:
    text = "```cpp\nint main() {}\n```\n\n```c\nint x;\n```\n  ```cpp\nvoid f();\n```\nI like cpp <b>."
    shown = shown_markdown(text)
    assert shown.count("```c++\n") == 2 and "```c\nint x;" in shown and shown.endswith("I like cpp <b>.")
    assert shown_markdown("你好 **bold** `<b>`") == "你好 **bold** `<b>`"  # text goes as written: copy gives it


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("I paid $5 and $10 today.", "I paid $5 and $10 today."),  # prices stay text
        ("It costs $5, or $e^{i\\pi}$.", "It costs $5, or \\(e^{i\\pi}\\)."),
        ("Inline $x^2$, display $$\\sum k$$.", "Inline \\(x^2\\), display $$\\sum k$$."),
        ("Both \\(a\\) and \\[b\\] as written", "Both \\(a\\) and \\[b\\] as written"),
        ("code `$a$` then $b$", "code `$a$` then \\(b\\)"),
        ("```sh\necho $HOME $x$\n```\n$y$", "```sh\necho $HOME $x$\n```\n\\(y\\)"),
        ("between $ 5 $ and 3$ each", "between $ 5 $ and 3$ each"),
    ],
)
def test_single_dollar_math_is_drawn_only_when_it_is_math(text: str, shown: str) -> None:
    assert shown_markdown(text) == shown


def test_thinking_off_keeps_a_think_tag_in_the_answer_and_a_cut_thought_stays_thinking() -> None:
    off = split_thinking("Tags: </think> stays text.", expect_thinking=False)
    assert (off.thinking, off.answer) == ("", "Tags: </think> stays text.")
    cut = split_thinking("Still weighing the options", expect_thinking=True, cut=True)
    assert (cut.thinking, cut.answer) == ("Still weighing the options", "")
    done = split_thinking("A plain answer.", expect_thinking=True, cut=False)
    assert (done.thinking, done.answer) == ("", "A plain answer.")


def test_max_new_tokens_is_bounded_by_the_context_and_leaves_room_for_a_prompt() -> None:
    assert max_new_tokens_bound(8192) == 7168 and max_new_tokens_bound(8192) % 16 == 0
    assert max_new_tokens_bound(40960) < 40960 and max_new_tokens_bound(64) == 16


def test_stop_signals_detach_or_drop_only_their_own_session() -> None:
    signals = StopSignals()
    with signals.reply("a") as mine, signals.reply("b", "chat-1") as other:
        assert signals.stop_and_wait("a", 0.01, drop=True) is False  # still inside its reply
        assert mine.is_set() and mine.discarded == "dropped"
        assert not other.is_set() and other.discarded == ""
        signals.detach("b", 1.0)  # its tab opened another chat: the reply goes on, not drawn
        assert other.discarded == "detached" and not other.is_set() and not signals.running("b")
        with signals.reply("b", "chat-2") as second:  # the other chat can have its own reply
            assert second is not None and signals.stop("b") == 1 and second.is_set() and not other.is_set()
        with signals.reply("b", "chat-3") as third, signals.reply("b", "chat-3") as fourth:
            assert third is not None and fourth is None  # one reply at a time in the chat shown
        assert signals.attach("b", "chat-1") is other and other.discarded == "" and signals.running("b")


def test_a_streaming_reply_is_saved_marked_interrupted() -> None:
    conversation = Conversation("", [Turn("user", "Hi"), Turn("assistant", "Hello")])
    record = saved_form(conversation, "abc", "", pending_exchange("Next?", "Hmm", "Part", {"new_tokens": 2}))
    assert record["id"] == "abc" and record["title"] == "Hi"
    assert [m["content"] for m in record["messages"]] == ["Hi", "Hello", "Next?", "Part"]
    restored = from_saved_form(json.loads(json.dumps(record)), "")
    assert restored.turns[-1].stats["finish_reason"] == "interrupted" and restored.turns[-1].thinking == "Hmm"


def test_sampling_defaults_follow_the_mode_until_the_user_changes_them() -> None:
    untouched = sampling_kwargs(0.6, 0.95, 20, 512, 0.0, 1.0)  # thinking defaults still on the sliders
    assert "temperature" not in untouched and untouched["max_new_tokens"] == 512
    assert "temperature" not in sampling_kwargs(0.7, 0.8, 20, 512, 0.0, 1.0)  # non-thinking defaults
    chosen = sampling_kwargs(0.3, 0.95, 20, 512, 0.5, 1.1)
    assert chosen["temperature"] == 0.3 and chosen["top_p"] == 0.95 and chosen["presence_penalty"] == 0.5


def test_saved_form_round_trips_and_rejects_what_is_not_a_conversation() -> None:
    conversation = Conversation(
        "Be brief.",
        [Turn("user", "你好"), Turn("assistant", "Hello!", "Greeting.", {"new_tokens": 3, "thinking_seconds": 0.5})],
    )
    data = json.loads(json.dumps(saved_form(conversation)))
    restored = from_saved_form(data, "Be brief.")
    assert restored == conversation
    assert from_saved_form(data["messages"], "").turns == conversation.turns  # a bare list also imports
    with pytest.raises(ChatbotError, match="not a conversation"):
        from_saved_form({"hello": 1}, "")
    with pytest.raises(ChatbotError, match="role"):
        from_saved_form([{"role": "robot", "content": "x"}], "")


def chat_of(*texts: str) -> Conversation:
    """A conversation alternating user and assistant turns with the given texts."""
    return Conversation("", [Turn("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts)])


def branch_at(conversation: Conversation, index: int, *new_texts: str) -> None:
    """What the web chat does on an edit (or a regeneration) of turn ``index``, the new reply included."""
    versions = versions_before_change(conversation, index)
    role = conversation.turns[index].role
    del conversation.turns[index:]
    conversation.turns += [Turn("user" if (index + i) % 2 == 0 else "assistant", t) for i, t in enumerate(new_texts)]
    add_version(conversation.turns[index], versions)
    assert conversation.turns[index].role == role


def contents(conversation: Conversation) -> list[str]:
    return [turn.content for turn in conversation.turns]


def test_editing_an_earlier_question_keeps_the_old_line_as_a_version() -> None:
    chat = chat_of("Q1", "A1", "Q2", "A2")
    branch_at(chat, 0, "Q1 edited", "A1 again")
    assert contents(chat) == ["Q1 edited", "A1 again"]
    assert chat.turns[0].version == 1 and len(chat.turns[0].versions) == 2
    show_version(chat, 0, 0)  # back to the first version: the rest of its line comes back too
    assert contents(chat) == ["Q1", "A1", "Q2", "A2"]
    branch_at(chat, 3, "A2 regenerated")  # a regeneration inside that line has versions of its own
    assert contents(chat) == ["Q1", "A1", "Q2", "A2 regenerated"]
    show_version(chat, 0, 1)
    assert contents(chat) == ["Q1 edited", "A1 again"]
    show_version(chat, 0, 0)
    assert contents(chat) == ["Q1", "A1", "Q2", "A2 regenerated"]
    assert chat.turns[3].version == 1 and chat.turns[3].versions[0]["content"] == "A2"
    show_version(chat, 3, 0)
    assert contents(chat) == ["Q1", "A1", "Q2", "A2"]
    with pytest.raises(ChatbotError, match="no such version"):
        show_version(chat, 1, 1)


def test_versions_are_saved_exported_and_imported_with_their_lines() -> None:
    chat = chat_of("Q1", "A1", "Q2", "A2")
    branch_at(chat, 2, "Q2 edited", "A2 again")
    branch_at(chat, 0, "Q1 edited", "A1 again")
    record = json.loads(json.dumps(saved_form(chat, "id1", "")))
    first = record["messages"][0]
    assert first["version"] == 1 and first["versions"][1]["after"] == []  # the line shown is not stored twice
    assert [m["content"] for m in first["versions"][0]["after"]] == ["A1", "Q2 edited", "A2 again"]
    restored = from_saved_form(record, "")
    assert contents(restored) == ["Q1 edited", "A1 again"]
    show_version(restored, 0, 0)
    assert contents(restored) == ["Q1", "A1", "Q2 edited", "A2 again"]
    show_version(restored, 2, 0)  # the nested edit came through the file too
    assert contents(restored) == ["Q1", "A1", "Q2", "A2"]

    # A file from before questions had versions: answers with versions but no "after".
    old = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "new", "versions": [{"content": "old"}, {"content": "new"}], "version": 1},
    ]
    imported = from_saved_form(old, "")
    show_version(imported, 1, 0)
    assert contents(imported) == ["Q", "old"]
    broken = [
        {"role": "user", "content": "Q", "versions": [{"content": "a", "after": [{"role": "x"}]}, {"content": "Q"}]}
    ]
    with pytest.raises(ChatbotError, match="role"):
        from_saved_form(broken, "")


def test_version_switches_are_drawn_under_the_answer_that_follows() -> None:
    chat = chat_of("Q1", "A1", "Q2", "A2")
    branch_at(chat, 2, "Q2 edited", "A2 again")
    branch_at(chat, 3, "A2 third")
    drawn = indexed_messages(chat)
    stats = [(index, m["content"]) for index, m in drawn if is_stats_message(m)]
    assert len(stats) == 1 and stats[0][0] == 3  # one line under the last answer, for both turns
    line = re.sub(r"<[^>]+>", "", stats[0][1])
    assert line == "‹ question 2 of 2 › · ‹ answer 2 of 2 ›"
    assert "qc-turn-2" in stats[0][1] and "qc-turn-3" in stats[0][1] and "qc-step-prev" in stats[0][1]
    assert [index for index, _ in drawn] == [0, 1, 2, 3, 3]


TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 18, "sky": "sunny"}'},
    {"role": "assistant", "content": "It is 18 °C and sunny in Paris."},
]


def test_tool_calls_and_results_are_drawn_as_folded_blocks_and_resent_as_written() -> None:
    chat = from_saved_form(TOOL_CHAT, "")
    drawn = conversation_messages(chat)
    call, result = drawn[1], drawn[2]
    assert call["metadata"]["title"] == 'Tool call: get_weather · {"city": "Paris", "unit": "celsius"}'
    assert call["content"] == '```json\n{\n  "city": "Paris",\n  "unit": "celsius"\n}\n```'  # laid out
    assert result["metadata"]["title"] == 'Tool result: get_weather · {"temperature": 18, "sky": "sunny"}'
    assert result["content"].startswith('```json\n{\n  "temperature": 18')
    assert drawn[3]["content"] == "It is 18 °C and sunny in Paris."
    # The model sees the calls and the result as OpenAI writes them; saving keeps them.
    sent = chat.messages_with("And tomorrow?")
    assert sent[1]["tool_calls"] == TOOL_CHAT[1]["tool_calls"] and sent[1]["content"] == ""
    assert sent[2] == {"role": "tool", "content": TOOL_CHAT[2]["content"], "tool_call_id": "call_1"}
    assert from_saved_form(json.loads(json.dumps(saved_form(chat))), "") == chat
    # Plain text results stay text; a long one is cut in the title only.
    long = from_saved_form([*TOOL_CHAT[:2], {"role": "tool", "tool_call_id": "call_1", "content": "word " * 40}], "")
    block = conversation_messages(long)[2]
    assert block["content"] == "word " * 40 and block["metadata"]["title"].endswith("…")
    with pytest.raises(ChatbotError, match="tool_calls"):
        from_saved_form([{"role": "assistant", "content": None, "tool_calls": "get_weather"}], "")


def test_live_reply_opens_thinking_then_closes_it_when_the_answer_starts() -> None:
    live = LiveReply()
    live.apply(ThinkingDelta("Let me think."))
    first = live.messages()
    assert first[0]["metadata"]["status"] == "pending" and first[0]["content"] == "Let me think."
    live.apply(AnswerDelta("Hi"))
    second = live.messages()
    assert second[0]["metadata"]["status"] == "done" and second[0]["metadata"]["title"].startswith("Thought for ")
    assert second[1] == {"role": "assistant", "content": "Hi"}
    assert all(a is not b for a, b in zip(first, second, strict=False))  # fresh dicts every step
    live.apply(ChatDone("Let me think.", "Hi!", "", "stop", True, {"new_tokens": 5, "time_to_first_token": 0.1}))
    assert "5 tokens" in text_of(live.messages()[-1])


def test_live_reply_says_when_it_is_paused_for_someone_else_and_goes_on() -> None:
    live = LiveReply()
    live.apply(QueuePosition(2))
    assert "position 2" in live.status
    live.apply(AnswerDelta("Hel"))
    live.apply(QueuePosition(1, paused=True))
    assert live.status.startswith("Paused to give someone else a turn") and live.answer == "Hel"
    live.apply(AnswerDelta("lo"))
    assert live.status == "Writing…" and live.answer == "Hello"


def test_a_reply_saved_mid_stream_gives_no_speed_for_tokens_that_came_at_once() -> None:
    live = LiveReply()
    live.apply(AnswerDelta("Four tokens at once"))
    assert "tokens_per_second" not in live.progress_stats(4)  # not "10810 tokens/s"
    live.first_text = (live.first_text or 0) - 2.0  # two seconds of writing later
    assert 1.0 < live.progress_stats(5)["tokens_per_second"] < 3.0


def test_a_long_reply_is_redrawn_less_often_so_the_page_keeps_up() -> None:
    assert stream_interval("", "short answer") == STREAM_INTERVAL_SECONDS
    assert stream_interval("t" * 20_000, "a" * 20_000) == pytest.approx(1.0)  # 40,000 characters: once a second
    assert stream_interval("", "a" * 400_000) == pytest.approx(10.0)


# --- the running app: scripted model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted_app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    with running_app(["--model", str(scripted_fp8)], tmp_path_factory.mktemp("ui") / "scripted.log", api=False) as app:
        yield app


@pytest.fixture
def client(scripted_app: RunningApp) -> Client:
    return Client(scripted_app.ui_url, verbose=False)


def test_reply_streams_in_chunks_with_thinking_and_answer_apart(client: Client) -> None:
    job = client.submit(message="Hello there", enable_thinking=True, api_name="/chat")
    job.result(timeout=WAIT_LIMIT_SECONDS)
    chats = [output[0] for output in job.outputs()]
    assert job.outputs()[0][1] == ""  # the message box is emptied as soon as the message is sent
    assert len(chats) >= 4, f"expected several streamed chunks, got {len(chats)}"
    parts = [reply_parts(chat) for chat in chats]
    assert any(p["thinking"] and p["thinking"]["metadata"]["status"] == "pending" and not p["answer"] for p in parts)
    partial_answers = [p["answer"] for p in parts[:-1] if p["answer"]]
    assert partial_answers and all(SCRIPTED_ANSWER.startswith(a) for a in partial_answers)
    assert any(a != SCRIPTED_ANSWER for a in partial_answers), "the answer arrived in one piece"
    final = parts[-1]
    assert final["user"] == "Hello there"
    assert text_of(final["thinking"]) == SCRIPTED_THINKING
    assert final["thinking"]["metadata"]["status"] == "done"
    assert final["thinking"]["metadata"]["title"].startswith("Thought for ")
    assert final["answer"] == SCRIPTED_ANSWER
    assert re.search(r"s to first token · [\d.]+ tokens/s · \d+ tokens", final["stats"])


def test_thinking_off_gives_no_thinking_block_and_earlier_thinking_stays(client: Client) -> None:
    client.predict(message="First, with thinking", enable_thinking=True, api_name="/chat")
    chat, _, _, _ = client.predict(message="Now without", enable_thinking=False, api_name="/chat")
    final = reply_parts(chat)
    assert final["thinking"] is None
    assert final["answer"] == SCRIPTED_ANSWER
    earlier = [m for m in chat if (m.get("metadata") or {}).get("title")]
    assert len(earlier) == 1 and earlier[0]["metadata"]["status"] == "done"  # the first turn keeps its thinking


def test_precision_badge_matches_the_loaded_model(client: Client, scripted_app: RunningApp, scripted_fp8) -> None:
    badge = client.predict(api_name="/model_status")
    fields = badge_fields(badge)
    expected = load_model(str(scripted_fp8), device="cpu").precision
    assert fields["label"] == expected.label
    assert fields["device"] == expected.device_name
    assert re.fullmatch(r"[\d.]+ (MiB|GiB|KiB)", fields["weights"])
    assert "demo model, random weights" in badge  # a generated checkpoint says so
    logged = re.search(r"Precision: (.*)", scripted_app.log()).group(1)
    assert logged == f"{fields['label']} on {expected.device} ({fields['device']}): {fields['reason']}"


def test_two_clients_keep_separate_histories(scripted_app: RunningApp) -> None:
    alice, bob = Client(scripted_app.ui_url, verbose=False), Client(scripted_app.ui_url, verbose=False)
    alice.predict(message="Alice one", enable_thinking=False, api_name="/chat")
    bob.predict(message="Bob one", enable_thinking=False, api_name="/chat")
    alice_chat, _, _, _ = alice.predict(message="Alice two", enable_thinking=False, api_name="/chat")
    bob_chat, _ = bob.predict(api_name="/undo")
    assert user_texts(alice_chat) == ["Alice one", "Alice two"]
    assert bob_chat == []  # Bob's undo removed Bob's only exchange, not Alice's


@pytest.mark.parametrize(
    ("message", "expected"),
    [("", "Type a message first"), ("   \n\t ", "only blank space"), ("x" * 100_000, "context window")],
    ids=["empty", "whitespace", "100k-characters"],
)
def test_bad_input_gets_a_clear_message_keeps_the_text_and_the_app_keeps_working(
    client: Client, message: str, expected: str
) -> None:
    client.predict(message="Before", enable_thinking=False, api_name="/chat")
    chat, box, notice, _ = client.predict(message=message, enable_thinking=False, api_name="/chat")
    assert expected in html.unescape(notice)
    assert box == message  # nothing typed is lost
    assert user_texts(chat) == ["Before"]  # the history is unchanged
    chat, box, notice, _ = client.predict(message="After", enable_thinking=False, api_name="/chat")
    assert reply_parts(chat)["answer"] == SCRIPTED_ANSWER and box in ("", UNCHANGED) and notice == ""
    assert user_texts(chat) == ["Before", "After"]


def test_regenerate_edit_undo_and_clear(client: Client) -> None:
    client.predict(message="One", enable_thinking=False, api_name="/chat")
    client.predict(message="Two", enable_thinking=False, api_name="/chat")
    chat, _, _, _ = client.predict(enable_thinking=True, api_name="/regenerate")
    assert user_texts(chat) == ["One", "Two"]
    assert reply_parts(chat)["thinking"] is not None  # answered again, this time thinking
    assert reply_parts(chat)["stats"].startswith("‹ answer 2 of 2 ›")
    chat, record, _ = client.predict(api_name="/previous_answer")  # the first answer (no thinking) is kept
    assert reply_parts(chat)["thinking"] is None and reply_parts(chat)["stats"].startswith("‹ answer 1 of 2 ›")
    assert (
        json.loads(record)["messages"][-1]["version"] == 0 and len(json.loads(record)["messages"][-1]["versions"]) == 2
    )
    chat, _, _ = client.predict(api_name="/next_answer")
    assert reply_parts(chat)["thinking"] is not None
    chat, box, _, _, _ = client.predict(message="", api_name="/edit_last")
    assert box == "Two" and user_texts(chat) == ["One"]  # kept as it was until the edit is sent
    chat, _ = client.predict(api_name="/undo")
    assert chat == []
    client.predict(message="Three", enable_thinking=False, api_name="/chat")
    # Clear deletes the chat (the page drops it from its storage, with an undo) and starts a new one.
    chat, new_id, record, deleted = client.predict(api_name="/clear")
    assert chat == [] and json.loads(record)["messages"] == [] and deleted and new_id != deleted
    _, _, notice, _ = client.predict(enable_thinking=False, api_name="/regenerate")
    assert "nothing to regenerate" in notice.lower() or "no answer to regenerate" in notice.lower()


def test_the_context_meter_counts_the_system_prompt_and_tells_a_refusal_from_trimming(client: Client) -> None:
    def meter(message: str, system_prompt: str = "", max_new_tokens: int = 64) -> str:
        return client.predict(
            message=message,
            system_prompt=system_prompt,
            enable_thinking=False,
            max_new_tokens=max_new_tokens,
            api_name="/context_meter",
        )

    def used(text: str) -> int:
        return int(re.search(r"([\d,]+) /", text).group(1).replace(",", ""))

    plain = meter("Hello")
    assert used(meter("Hello", system_prompt="Answer in one short sentence, please.")) > used(plain)
    # A message that cannot fit on its own is refused when sent: the meter says so, not "left out".
    refused = html.unescape(meter("word " * 50_000))
    assert "oldest turns" not in refused and "Shorten the message" in refused


def test_edit_last_keeps_the_old_exchange_as_a_version(client: Client) -> None:
    client.predict(message="One", enable_thinking=False, api_name="/chat")
    client.predict(message="Two", enable_thinking=False, api_name="/chat")
    chat, box, _, _, _ = client.predict(message="", api_name="/edit_last")
    assert box == "Two" and user_texts(chat) == ["One"]
    chat, _, notice, record = client.predict(message="Two, edited", enable_thinking=False, api_name="/chat")
    assert notice == "" and user_texts(chat) == ["One", "Two, edited"]
    assert reply_parts(chat)["stats"].startswith("‹ question 2 of 2 ›")
    assert [v["content"] for v in json.loads(record)["messages"][2]["versions"]] == ["Two", "Two, edited"]
    chat, _, _ = client.predict(request_text="2:-1", api_name="/switch_version")
    assert user_texts(chat) == ["One", "Two"] and reply_parts(chat)["answer"] == SCRIPTED_ANSWER
    # Edit last, then Undo: the chat changed meanwhile, so the next message is a new one, not a version.
    client.predict(message="", api_name="/edit_last")
    client.predict(api_name="/undo")
    chat, _, _, _ = client.predict(message="Fresh", enable_thinking=False, api_name="/chat")
    assert user_texts(chat) == ["Fresh"] and "of 2" not in reply_parts(chat)["stats"]


def test_edit_any_question_then_switch_between_its_versions(client: Client) -> None:
    client.predict(message="One", enable_thinking=False, api_name="/chat")
    client.predict(message="Two", enable_thinking=False, api_name="/chat")

    def edit(position: int, text: str) -> tuple[Any, ...]:
        request = json.dumps({"index": position, "value": text})  # what the page sends for the Chatbot's edit
        return client.predict(edit_request=request, enable_thinking=False, api_name="/edit_message")

    chat, _, notice, _ = edit(1, "not mine")  # position 1 is the first answer
    assert "Only your own messages" in html.unescape(notice) and user_texts(chat) == ["One", "Two"]
    chat, _, notice, _ = edit(0, "  ")
    assert "needs some text" in html.unescape(notice) and user_texts(chat) == ["One", "Two"]
    chat, _, notice, record = edit(0, "One, edited")
    assert notice == "" and user_texts(chat) == ["One, edited"]
    assert reply_parts(chat)["answer"] == SCRIPTED_ANSWER
    assert reply_parts(chat)["stats"].startswith("‹ question 2 of 2 ›")
    assert [v["content"] for v in json.loads(record)["messages"][0]["versions"]] == ["One", "One, edited"]
    chat, record, notice = client.predict(request_text="0:-1", api_name="/switch_version")
    assert user_texts(chat) == ["One", "Two"] and notice == ""
    assert json.loads(record)["messages"][0]["version"] == 0
    chat, _, notice = client.predict(request_text="1:1", api_name="/switch_version")  # an answer with no versions
    assert "no other version" in html.unescape(notice) and chat == UNCHANGED


def test_export_then_import_in_another_session(scripted_app: RunningApp, tmp_path: Path) -> None:
    writer, reader = Client(scripted_app.ui_url, verbose=False), Client(scripted_app.ui_url, verbose=False)
    writer.predict(message="Keep this 对话", enable_thinking=True, system_prompt="Answer briefly.", api_name="/chat")
    exported = json.loads(Path(writer.predict(api_name="/export_conversation")).read_text(encoding="utf-8"))
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
    assert exported["system_prompt"] == "Answer briefly."
    assert exported["messages"][1]["thinking"] == SCRIPTED_THINKING
    saved = tmp_path / "chat.json"
    saved.write_text(json.dumps(exported, ensure_ascii=False), encoding="utf-8")
    chat, notice, system_prompt, _, record, _ = reader.predict(handle_file(str(saved)), api_name="/import_conversation")
    assert notice == "" and user_texts(chat) == ["Keep this 对话"] and system_prompt == "Answer briefly."
    assert reply_parts(chat)["answer"] == SCRIPTED_ANSWER and json.loads(record)["messages"] == exported["messages"]
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    _, notice, *_ = reader.predict(handle_file(str(broken)), api_name="/import_conversation")
    assert "not valid JSON" in html.unescape(notice)


def test_browser_chats_export_as_one_markdown_file_and_import_back(scripted_app: RunningApp, tmp_path: Path) -> None:
    """Without --auth the page sends its own chats with "Export all as Markdown" (gradio_client passes them here)."""
    writer, reader = Client(scripted_app.ui_url, verbose=False), Client(scripted_app.ui_url, verbose=False)
    records = []
    for question in ("Kept in the browser", "And another 对话"):
        _, _, _, record = writer.predict(message=question, enable_thinking=True, api_name="/chat")
        records.append(json.loads(record))
        writer.predict(api_name="/new_chat")
    page_chats = json.dumps([*records, {"id": "x", "messages": []}])
    path = writer.predict(page_chats=page_chats, api_name="/export_all_markdown")
    text = Path(path).read_text(encoding="utf-8")
    assert "# Kept in the browser\n" in text and "# And another 对话\n" in text  # the empty chat is left out
    saved = tmp_path / "qwen3-chats.md"
    saved.write_text(text, encoding="utf-8")
    chat, notice, _, _, record, _ = reader.predict(handle_file(str(saved)), api_name="/import_conversation")
    assert "Imported 2 chats." in notice and user_texts(chat) == ["Kept in the browser"]
    assert json.loads(record)["messages"] == records[0]["messages"]


def test_messages_go_to_the_page_as_written(client: Client) -> None:
    # The page shows tags as text and runs nothing (tests/browser/test_browser.py); the value keeps the source, so
    # copying a message gives what was typed, "a < b" included.
    typed = 'a < b && <img src=x onerror="alert(1)"> <script>alert(2)</script>'
    chat, _, _, record = client.predict(message=typed, api_name="/chat")
    assert reply_parts(chat)["user"] == typed and json.loads(record)["messages"][-2]["content"] == typed


def test_max_new_tokens_past_the_context_is_bounded_not_an_error(client: Client) -> None:
    chat, _, notice, _ = client.predict(message="hi", enable_thinking=False, max_new_tokens=32768, api_name="/chat")
    assert notice == "" and reply_parts(chat)["answer"] == SCRIPTED_ANSWER


# --- the running app: random model, login, a queue of one -------------------------------------------------


@pytest.fixture(scope="module")
def busy_app(random_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    with running_app(
        ["--model", str(random_fp8), "--auth", ":".join(LOGIN), "--queue-size", "1", "--max-batch", "1"],
        tmp_path_factory.mktemp("ui") / "busy.log",
        api=False,
    ) as app:
        yield app


def long_reply(client: Client):
    return client.submit(
        message="Write forever",
        enable_thinking=False,
        max_new_tokens=LONG_REPLY_TOKENS,
        min_new_tokens=LONG_REPLY_TOKENS,
        api_name="/chat",
    )


def test_login_is_required_when_auth_is_set(busy_app: RunningApp) -> None:
    assert httpx.get(busy_app.ui_url + "/config", timeout=10).status_code in (401, 403)
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(busy_app.ui_url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(busy_app.ui_url, auth=("tester", "wrong"), verbose=False)
    client = Client(busy_app.ui_url, auth=LOGIN, verbose=False)

    def ready_badge() -> str | None:
        badge = client.predict(api_name="/model_status")
        if 'data-status="ready"' in badge:
            return badge
        assert re.search(r"loading\.\.\. \d+%", badge), badge  # the model loads in the background meanwhile
        return None

    label = badge_fields(wait_for(ready_badge, what="the model to load"))["label"]
    assert re.fullmatch(r"FP8 native|(FP16|BF16|FP32)( fallback)?", label)


def test_stop_halts_generation_and_the_next_message_works(busy_app: RunningApp) -> None:
    client = Client(busy_app.ui_url, auth=LOGIN, verbose=False)
    job = long_reply(client)
    wait_for(lambda: len(answer_so_far(job)) > 20, what="the answer to start")
    client.predict(api_name="/stop")
    job.result(timeout=WAIT_LIMIT_SECONDS)
    final = reply_parts(last_chat(job))
    assert "stopped" in final["stats"] and final["answer"]
    tokens = int(re.search(r"(?<![\d.])(\d+) tokens?(?!/)", final["stats"]).group(1))  # not "35.2 tokens/s"
    assert tokens < LONG_REPLY_TOKENS
    # the engine itself stopped (it did not just stop showing tokens)
    assert busy_app.cancelled_generations()[-1] == (tokens, LONG_REPLY_TOKENS)
    chat, _, notice, _ = client.predict(message="Short one", enable_thinking=False, max_new_tokens=16, api_name="/chat")
    assert notice == "" and "16 tokens" in reply_parts(chat)["stats"]
    assert user_texts(chat) == ["Write forever", "Short one"]


def test_edit_last_during_a_reply_is_refused_and_keeps_the_typed_text(busy_app: RunningApp) -> None:
    client = Client(busy_app.ui_url, auth=LOGIN, verbose=False)
    client.predict(message="First question", enable_thinking=False, max_new_tokens=16, api_name="/chat")
    job = long_reply(client)
    wait_for(lambda: len(answer_so_far(job)) > 20, what="the answer to start")
    _, box, notice, _, _ = client.predict(message="A follow-up I typed", api_name="/edit_last")
    assert box == "A follow-up I typed" and "still being written" in html.unescape(notice)
    assert not job.done()  # the reply goes on
    client.predict(api_name="/stop")
    job.result(timeout=WAIT_LIMIT_SECONDS)
    assert user_texts(last_chat(job)) == ["First question", "Write forever"]


def test_regenerate_during_a_chats_first_reply_says_it_is_busy_and_leaves_the_chat_alone(busy_app: RunningApp) -> None:
    """The first reply is not in the tab's chat until it ends: Regenerate then is busy, not "no answer yet"."""
    client = Client(busy_app.ui_url, auth=LOGIN, verbose=False)
    job = long_reply(client)
    wait_for(lambda: len(answer_so_far(job)) > 20, what="the answer to start")
    chat, _, notice, _ = client.predict(enable_thinking=False, api_name="/regenerate")
    assert "still being written" in html.unescape(notice) and "no answer" not in notice
    assert chat != []  # the chat is not redrawn from the tab's chat, which lacks the reply being written
    assert not job.done()
    client.predict(api_name="/stop")
    job.result(timeout=WAIT_LIMIT_SECONDS)
    assert user_texts(last_chat(job)) == ["Write forever"]


def test_queue_position_is_shown_and_stop_only_cancels_its_own_request(busy_app: RunningApp) -> None:
    first, second, third = (Client(busy_app.ui_url, auth=LOGIN, verbose=False) for _ in range(3))
    running = long_reply(first)
    wait_for(lambda: answer_so_far(running), what="the first reply to start")
    waiting = long_reply(second)
    wait_for(lambda: "In the queue: position 1" in stats_so_far(waiting), what="the queue position")

    # The queue holds one waiting request: a third is turned away with a message, its text kept.
    _, box, notice, _ = third.predict(message="Me too", enable_thinking=False, api_name="/chat")
    assert "queue is full" in html.unescape(notice) and box == "Me too"

    second.predict(api_name="/stop")  # leaves the queue at once; the running reply goes on
    chat, box, notice, _ = waiting.result(timeout=WAIT_LIMIT_SECONDS)
    assert "Stopped before the model started" in notice and box == "Write forever" and chat == []
    assert not running.done()
    grown = len(answer_so_far(running))
    wait_for(lambda: len(answer_so_far(running)) > grown, what="the first reply to go on")

    first.predict(api_name="/stop")
    running.result(timeout=WAIT_LIMIT_SECONDS)
    assert "stopped" in reply_parts(last_chat(running))["stats"]


def test_stop_and_wait_returns_once_the_reply_has_ended() -> None:
    import threading

    signals = StopSignals()
    ended = threading.Event()

    def reply() -> None:
        with signals.reply("tab") as signal:
            signal.wait(WAIT_LIMIT_SECONDS)
        ended.set()

    worker = threading.Thread(target=reply)
    worker.start()
    wait_for(lambda: signals.stop("other") == 0 and "tab" in signals._by_session, what="the reply to start")
    assert signals.stop_and_wait("tab", WAIT_LIMIT_SECONDS, drop=True)
    worker.join(WAIT_LIMIT_SECONDS)
    assert ended.is_set() or not worker.is_alive()
    assert signals.stop_and_wait("nobody", 0.1)  # nothing running: returns at once
