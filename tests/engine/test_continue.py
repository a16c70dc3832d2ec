"""Continuing a reply that was cut (max tokens, Stop): the prompt ends inside the cut message (its thinking,
or its answer), the reply writes on from there, and the parts join into the reply the model would have
written at once. On the scripted model, whose words are exact.

.venv/bin/python -m pytest tests/engine/test_continue.py -q
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING, THINKING_SCRIPT
from chatbot.chat.events import ChatDone, ThinkingDelta
from chatbot.chat.local import LocalBackend
from chatbot.chat.prompt import build_prompt
from chatbot.chat.request import ChatRequest
from chatbot.chat.thinking import ThinkingStreamSplitter
from chatbot.engine.engine import ChatEngine
from chatbot.errors import ContextLengthError, InvalidRequestError

QUESTION = {"role": "user", "content": "Hi"}


@pytest.fixture(scope="module")
def backend(scripted_fp8):
    engine = ChatEngine(str(scripted_fp8), device="cpu")
    yield LocalBackend(engine)
    engine.close()


@pytest.fixture(scope="module")
def tokenizer(scripted_fp8):
    return AutoTokenizer.from_pretrained(str(scripted_fp8))


def reply(backend, messages, **options) -> tuple[ChatDone, str]:
    request = ChatRequest.build(messages, enable_thinking=True, temperature=0, **options)
    events = list(backend.stream(request))
    streamed = "".join(event.text for event in events if isinstance(event, ThinkingDelta))
    done = events[-1]
    assert isinstance(done, ChatDone)
    return done, streamed


def test_a_reply_cut_in_its_thinking_goes_on_thinking_then_answers(backend) -> None:
    cut, _ = reply(backend, [QUESTION], max_new_tokens=3)
    assert cut.finish_reason == "length" and cut.answer == "" and SCRIPTED_THINKING.startswith(cut.thinking)
    partial = {"role": "assistant", "content": "", "reasoning_content": cut.thinking}
    rest, streamed = reply(backend, [QUESTION, partial])
    assert rest.finish_reason == "stop"
    assert cut.thinking + rest.thinking == SCRIPTED_THINKING  # the space that joins them is kept
    assert streamed == rest.thinking
    assert rest.answer == SCRIPTED_ANSWER


def test_thinking_sent_as_think_tags_in_the_content_is_continued_too(backend) -> None:
    partial = {"role": "assistant", "content": "<think>\n" + THINKING_SCRIPT[0]}
    rest, _ = reply(backend, [QUESTION, partial])
    assert THINKING_SCRIPT[0] + rest.thinking == SCRIPTED_THINKING and rest.answer == SCRIPTED_ANSWER


def test_a_reply_cut_in_its_answer_goes_on_with_the_answer(backend) -> None:
    cut, _ = reply(backend, [QUESTION], max_new_tokens=len(THINKING_SCRIPT) + 7)
    assert cut.answer and SCRIPTED_ANSWER.startswith(cut.answer) and cut.answer != SCRIPTED_ANSWER
    partial = {"role": "assistant", "content": cut.answer, "reasoning_content": cut.thinking}
    rest, streamed = reply(backend, [QUESTION, partial])
    assert streamed == "" and rest.thinking == ""
    assert cut.answer + rest.answer == SCRIPTED_ANSWER


def test_the_prompt_ends_inside_the_cut_part(tokenizer) -> None:
    def prompt_text(partial, thinking=True):
        prompt = build_prompt(
            tokenizer, [QUESTION, partial], enable_thinking=thinking, max_context=512, max_new_tokens=8
        )
        return prompt, tokenizer.decode(prompt.ids)

    prompt, text = prompt_text({"role": "assistant", "content": "", "reasoning_content": "Let me see"})
    assert text.endswith("<|im_start|>assistant\n<think>\nLet me see") and prompt.continued_part == "thinking"
    prompt, text = prompt_text({"role": "assistant", "content": "The answer", "reasoning_content": "Easy."})
    assert text.endswith("<|im_start|>assistant\n<think>\nEasy.\n</think>\n\nThe answer")
    assert prompt.continued_part == "answer"
    prompt, text = prompt_text({"role": "assistant", "content": "No thinking"}, thinking=False)
    assert text.endswith("<think>\n\n</think>\n\nNo thinking") and prompt.continued_part == "answer"


def test_a_continued_reply_keeps_its_question_when_old_turns_are_left_out(tokenizer) -> None:
    old = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    partial = {"role": "assistant", "content": "", "reasoning_content": "Thinking about it"}
    messages = [*old, QUESTION, partial]
    prompt = build_prompt(tokenizer, messages, enable_thinking=True, max_context=300, max_new_tokens=64)
    assert prompt.dropped_messages == 2
    assert "<|im_start|>user\nHi<|im_end|>" in tokenizer.decode(prompt.ids)
    with pytest.raises(ContextLengthError, match="no room is left"):
        build_prompt(tokenizer, [QUESTION, partial], enable_thinking=True, max_context=64, max_new_tokens=60)


def test_continue_final_message_needs_an_assistant_message_last() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        ChatRequest.build([QUESTION], continue_final_message=True)
    assert caught.value.param == "continue_final_message"
    request = ChatRequest.build([QUESTION, {"role": "assistant", "content": "So"}], continue_final_message=True)
    assert request.continue_final_message and request.continues


SPLIT_PIECES = [["", " more", " words\n</think>", "\n\nAnswer", " here "], [" more words\n</think>\n\nAnswer here "]]


@pytest.mark.parametrize("pieces", SPLIT_PIECES)
def test_the_streamed_split_of_a_continued_thinking_keeps_its_leading_space(pieces) -> None:
    splitter = ThinkingStreamSplitter(expect_thinking=False, continues="thinking")
    out = [piece for text in pieces for piece in splitter.feed(text)]
    thinking = "".join(text for kind, text in out if kind == "thinking")
    answer = "".join(text for kind, text in out if kind == "answer")
    final = splitter.finish()
    assert thinking == final.thinking == " more words"
    assert answer == final.answer == "Answer here"
