"""A chat exported as Markdown reads as a conversation and imports back exactly (``chat_markdown``). Pure.

.venv/bin/python -m pytest tests/unit/test_chat_markdown.py -q
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatbot.errors import ChatbotError
from chatbot.serve.chat_markdown import archive_to_markdown, chats_from_markdown, from_markdown, to_markdown
from chatbot.serve.ui_session import from_saved_form, saved_form

RECORD = {
    "format": "qwen3-chat-conversation",
    "id": "9f3c",
    "title": "Primes --> and more",
    "updated": 1732400000.5,
    "system_prompt": "Be terse.",
    "messages": [
        {
            "role": "user",
            "content": "Is 91 prime?",
            "versions": [{"content": "Is 91 odd?", "after": []}, {"content": "Is 91 prime?", "after": []}],
            "version": 1,
        },
        {
            "role": "assistant",
            "content": "No: 91 = 7 × 13.\n\n```python\nprint(7 * 13)\n```",
            "thinking": "91 = 7 × 13, so no.",
            "stats": {"new_tokens": 12, "finish_reason": "stop"},
        },
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome.", "thinking": ""},
    ],
}


def test_the_markdown_reads_as_a_conversation_with_thinking_folded() -> None:
    text = to_markdown(RECORD)
    assert text.splitlines()[1] == "# Primes --> and more"
    assert "### You\n\nIs 91 prime?\n" in text and "### Qwen3\n\n" in text and "### System prompt\n\nBe terse." in text
    assert "<details>\n<summary>Thinking</summary>\n\n91 = 7 × 13, so no.\n\n</details>" in text
    assert text.count("<details>") == 1  # an answer without thinking has no empty block
    # Nothing that is not text shows: the stats and versions ride in comments, which cannot be closed early.
    comments = [line for line in text.splitlines() if line.startswith("<!--")]
    assert len(comments) == 8 and all(line.endswith(" -->") and line.count("-->") == 1 for line in comments)
    assert "new_tokens" not in text.replace(comments[3], "")  # the assistant's stats: in its marker only


def test_our_own_markdown_imports_back_exactly() -> None:
    back = from_markdown(to_markdown(RECORD))
    assert back == RECORD
    conversation = from_saved_form(back, "")
    assert saved_form(conversation)["messages"] == RECORD["messages"]


PIECES = ["a", " ", "\n", "<", "!", "-", ">", "#", "`", "é", "<!-- qwen3-chat:user -->", "</details>", "\r"]
TEXT = st.lists(st.sampled_from(PIECES), max_size=30).map("".join)
SAMPLES = [
    "<!-- qwen3-chat:assistant -->\n",
    " <!-- qwen3-chat:answer -->",
    "<!-- qwen3-chat:answer -->\n\n",
    "\n\n</details>\n\n",
    "### You\n\n",
    "<!-- qwen3-chat-conversation {} -->",
    "",
    "\n",
]


@settings(max_examples=200, deadline=None)
@given(
    prompt=st.one_of(TEXT, st.sampled_from(SAMPLES)),
    question=st.one_of(TEXT, st.sampled_from(SAMPLES)),
    thinking=st.one_of(TEXT, st.sampled_from(SAMPLES)),
    answer=st.one_of(TEXT, st.sampled_from(SAMPLES)),
)
def test_any_text_round_trips(prompt: str, question: str, thinking: str, answer: str) -> None:
    record = {
        "format": "qwen3-chat-conversation",
        "system_prompt": prompt.replace("\r", ""),
        "messages": [
            {"role": "user", "content": question.replace("\r", "")},
            {"role": "assistant", "content": answer.replace("\r", ""), "thinking": thinking.replace("\r", "")},
        ],
    }
    assert from_markdown(to_markdown(record)) == record


def test_a_file_edited_by_hand_still_imports() -> None:
    text = to_markdown(RECORD).replace("Thanks", "Thanks a lot").rstrip("\n").replace("\n", "\r\n")
    back = from_markdown(text)
    assert back["messages"][2]["content"] == "Thanks a lot"
    assert back["messages"][3]["content"] == "You're welcome."


def test_markdown_from_elsewhere_is_refused_saying_why() -> None:
    with pytest.raises(ChatbotError, match="no chat exported by Qwen3 Chat") as refused:
        from_markdown("# Notes\n\nSome text.\n")
    assert "made by Export" in (refused.value.fix or "")
    with pytest.raises(ChatbotError, match="broken"):
        from_markdown("<!-- qwen3-chat:user {not json} -->\n### You\n\nhi\n\n")


# --- every chat in one file ("Export all as Markdown") ---------------------------------------------------


def test_every_chat_in_one_file_reads_under_its_title_and_imports_back_as_separate_chats() -> None:
    other = {
        "format": "qwen3-chat-conversation",
        "id": "a1b2",
        "title": "Second chat",
        "system_prompt": "",
        "messages": [{"role": "user", "content": "<!-- qwen3-chat-conversation {} -->\nHi"}, RECORD["messages"][3]],
    }
    text = archive_to_markdown([RECORD, other])
    assert "# Primes --> and more\n" in text and "\n# Second chat\n" in text
    assert chats_from_markdown(text) == [RECORD, other]
    assert chats_from_markdown(to_markdown(other)) == [other]  # a file of one chat is one chat
    assert chats_from_markdown(text.replace("\n", "\r\n")) == [RECORD, other]


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.one_of(TEXT, st.sampled_from(SAMPLES)), min_size=2, max_size=8))
def test_any_chats_round_trip_through_one_file(texts: list[str]) -> None:
    records = [
        {
            "format": "qwen3-chat-conversation",
            "id": f"chat{index}",
            "title": f"Chat {index}",
            "system_prompt": "",
            "messages": [
                {"role": "user", "content": text.replace("\r", "")},
                {"role": "assistant", "content": text.replace("\r", "")[::-1], "thinking": ""},
            ],
        }
        for index, text in enumerate(texts)
    ]
    assert chats_from_markdown(archive_to_markdown(records)) == records
