"""The thinking/answer split at </think>, complete and streamed, on every edge case."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatbot.chat.conversation import Conversation, Turn
from chatbot.chat.thinking import ThinkingStreamSplitter, split_thinking
from chatbot.serve.ui_session import from_saved_form, saved_form


@pytest.mark.parametrize(
    ("text", "thinking", "answer", "closed"),
    [
        ("<think>\nLet me see.\n</think>\n\nHello!", "Let me see.", "Hello!", True),
        ("<think>\n\n</think>\n\nHello!", "", "Hello!", True),  # empty thinking (non-thinking template)
        ("Let me see.\n</think>\n\nHello!", "Let me see.", "Hello!", True),  # missing opening tag
        ("<think>\nStill thinking when the budget ran out", "Still thinking when the budget ran out", "", False),
        ("Hello! No thinking at all.", "", "Hello! No thinking at all.", False),
        ("<think>a</think>b</think>c", "a", "b</think>c", True),  # only the first close tag splits
        ("  <think>x</think>y", "x", "y", True),
        ("", "", "", False),
    ],
)
def test_split_complete_reply(text, thinking, answer, closed) -> None:
    split = split_thinking(text)
    assert (split.thinking, split.answer, split.closed) == (thinking, answer, closed)


def stream(text: str, cuts: list[int], expect_thinking: bool) -> tuple[str, str, ThinkingStreamSplitter]:
    splitter = ThinkingStreamSplitter(expect_thinking)
    pieces = []
    start = 0
    for cut in [*sorted(cuts), len(text)]:
        pieces += splitter.feed(text[start:cut])
        start = cut
    thinking = "".join(t for kind, t in pieces if kind == "thinking")
    answer = "".join(t for kind, t in pieces if kind == "answer")
    return thinking, answer, splitter


def test_tag_split_across_chunks() -> None:
    text = "<think>\nPondering.\n</think>\n\nThe answer."
    for cut in range(1, len(text)):
        thinking, answer, _ = stream(text, [cut], expect_thinking=True)
        assert (thinking, answer) == ("Pondering.", "The answer."), cut


def test_token_by_token_stream_keeps_channels_apart() -> None:
    tokens = ["<think>", "\n", "I", " think", "</", "think", ">", "\n\n", "Yes", "."]
    splitter = ThinkingStreamSplitter(True)
    kinds = [kind for token in tokens for kind, _ in splitter.feed(token)]
    assert kinds == sorted(kinds, key=lambda k: k == "answer")  # all thinking before any answer
    assert splitter.finish().answer == "Yes."


def test_cut_off_inside_thinking_keeps_thinking_and_no_answer() -> None:
    thinking, answer, splitter = stream("<think>\nA long thought that never ends", [9, 20], True)
    assert thinking == "A long thought that never ends" and answer == ""
    assert splitter.finish().answer == ""


def test_non_thinking_stream_is_all_answer() -> None:
    thinking, answer, _ = stream("Hello there, friend.", [3, 7], expect_thinking=False)
    assert (thinking, answer) == ("", "Hello there, friend.")


words = st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    thought=words,
    reply=words,
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=8),
    opening=st.booleans(),
)
def test_stream_equals_final_split_whatever_the_chunking(thought, reply, cuts, opening) -> None:
    text = ("<think>\n" if opening else "") + thought + "\n</think>\n\n" + reply
    cuts = [c for c in cuts if c < len(text)]
    thinking, answer, splitter = stream(text, cuts, expect_thinking=True)
    final = splitter.finish()
    assert (thinking, answer) == (final.thinking, final.answer)
    assert final.thinking == thought.strip() and final.answer == reply.strip()


def test_thinking_off_a_close_tag_in_the_output_stays_in_the_answer() -> None:
    text = "Use </think> to end a thought.\n\nThat is all."
    for cut in range(1, len(text)):
        thinking, answer, splitter = stream(text, [cut], expect_thinking=False)
        assert (thinking, answer) == ("", text), cut
    final = splitter.finish()
    assert (final.thinking, final.answer) == ("", text)


def test_a_reply_cut_while_thinking_keeps_its_thinking_even_without_the_opening_tag() -> None:
    # Templates that open <think> in the prompt: the output starts inside the thinking.
    thinking, answer, splitter = stream("Weighing option A against option B", [5, 12], expect_thinking=True)
    assert (thinking, answer) == ("Weighing option A against option B", "")
    cut = splitter.finish(cut=True)
    assert (cut.thinking, cut.answer) == ("Weighing option A against option B", "")
    assert splitter.finish(cut=False).answer == "Weighing option A against option B"  # ended on its own: an answer


@pytest.mark.parametrize("thinking", ["", "Weighing it."])
def test_a_saved_answer_that_mentions_the_close_tag_opens_again_whole(thinking: str) -> None:
    """A chat is saved at every step and opened again at each reload: an answer that talks about the tag
    (thinking off, or the model quoting it) lost all it said before it each time."""
    answer = "Qwen3 ends its thinking with </think>, then answers."
    chat = Conversation("", [Turn("user", "How does Qwen3 end its thinking?"), Turn("assistant", answer, thinking)])
    back = from_saved_form(saved_form(chat, "id-1"), "")
    assert [(turn.content, turn.thinking) for turn in back.turns] == [(t.content, t.thinking) for t in chat.turns]


def test_raw_model_output_imported_is_still_split_at_the_close_tag() -> None:
    back = Conversation.from_list([{"role": "assistant", "content": "<think>Hm.</think>Yes."}])
    assert (back.turns[0].thinking, back.turns[0].content) == ("Hm.", "Yes.")
