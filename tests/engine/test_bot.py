"""Qwen3ChatBot end to end on the scripted model: multi-turn chat, thinking, history, events, errors."""

from __future__ import annotations

import json
import threading
import time

import pytest

from chatbot import (
    AnswerDelta,
    ChatDone,
    ContextLengthError,
    GenerationError,
    InvalidRequestError,
    QueueFullError,
    Qwen3ChatBot,
    ThinkingDelta,
)
from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING
from chatbot.engine.engine import ChatEngine, Finished
from chatbot.engine.sampling import sampling_options


@pytest.fixture(scope="module")
def engine(scripted_fp8):
    engine = ChatEngine(str(scripted_fp8), device="cpu")
    yield engine
    engine.close()


def test_construction_is_cheap_and_loads_on_first_use(scripted_fp8) -> None:
    bot = Qwen3ChatBot(str(scripted_fp8), device="cpu")
    assert bot.engine.status == "not loaded"
    reply = bot.chat("Hello")
    assert bot.engine.status == "ready"
    assert reply["answer"] == SCRIPTED_ANSWER
    bot.close()


def test_multi_turn_conversation_with_and_without_thinking(engine) -> None:
    bot = Qwen3ChatBot(engine=engine, system_prompt="You are a test.")
    first = bot.chat("Hi!", enable_thinking=True)
    assert first["thinking"] == SCRIPTED_THINKING
    assert first["answer"] == SCRIPTED_ANSWER
    assert first["full_response"] == f"<think>{SCRIPTED_THINKING}</think>\n\n{SCRIPTED_ANSWER}"
    assert first["finish_reason"] == "stop"

    second = bot.chat("Thanks", enable_thinking=False)
    assert second["thinking"] == "" and second["answer"] == SCRIPTED_ANSWER
    assert second["stats"]["cached_prompt_tokens"] > 0  # the conversation prefix was reused

    third = bot.chat("Think about it /think")  # soft switch turns thinking on for this message
    assert third["thinking"] == SCRIPTED_THINKING

    history = bot.get_history()
    assert [h["role"] for h in history] == ["user", "assistant"] * 3
    assert history[1] == {"role": "assistant", "content": SCRIPTED_ANSWER, "thinking": SCRIPTED_THINKING}
    # earlier answers are re-sent without their thinking
    sent = bot.conversation.messages_with("next")
    assert all("<think>" not in m["content"] for m in sent)
    assert sent[0] == {"role": "system", "content": "You are a test."}
    bot.clear_history()
    assert bot.get_history() == []


def test_stream_chat_yields_typed_events_in_order(engine) -> None:
    bot = Qwen3ChatBot(engine=engine)
    events = list(bot.stream_chat("Hi", enable_thinking=True))
    kinds = [type(e).__name__ for e in events if isinstance(e, ThinkingDelta | AnswerDelta | ChatDone)]
    assert kinds[-1] == "ChatDone" and kinds.count("ChatDone") == 1
    first_answer = kinds.index("AnswerDelta")
    assert set(kinds[:first_answer]) == {"ThinkingDelta"} and "ThinkingDelta" not in kinds[first_answer:]
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == SCRIPTED_THINKING
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == SCRIPTED_ANSWER
    done = events[-1]
    assert done.stats["new_tokens"] > 20 and done.stats["tokens_per_second"] > 0
    assert done.stats["prompt_tokens"] > 0 and done.stats["time_to_first_token"] > 0


def test_too_long_message_is_an_error_and_history_is_unchanged(engine) -> None:
    bot = Qwen3ChatBot(engine=engine)
    bot.chat("Hi")
    with pytest.raises(ContextLengthError, match="context window"):
        bot.chat("word " * 20000)
    assert len(bot.get_history()) == 2
    assert bot.chat("still here?")["answer"] == SCRIPTED_ANSWER


def test_bad_sampling_value_names_the_option(engine) -> None:
    bot = Qwen3ChatBot(engine=engine)
    with pytest.raises(InvalidRequestError) as caught:
        bot.chat("Hi", temperature=5)
    assert caught.value.param == "temperature"
    assert bot.get_history() == []


def test_greedy_is_not_used_in_thinking_mode() -> None:
    assert sampling_options(True, temperature=0).temperature == 0.6
    assert sampling_options(False, temperature=0).temperature == 0.0
    assert sampling_options(True).top_p == 0.95 and sampling_options(False).top_p == 0.8


def test_cancel_event_ends_the_reply_and_the_model_is_free(random_fp8) -> None:
    bot = Qwen3ChatBot(str(random_fp8), device="cpu")
    cancel = threading.Event()
    received = 0
    for event in bot.stream_chat("Go on forever", cancel=cancel, min_new_tokens=3000, max_new_tokens=3000):
        if isinstance(event, AnswerDelta):
            received += 1
            if received == 3:
                cancel.set()
        if isinstance(event, ChatDone):
            assert event.finish_reason == "cancelled"
            assert event.stats["new_tokens"] < 100
    assert bot.chat("Short one", max_new_tokens=5)["finish_reason"] == "length"
    bot.close()


def test_full_queue_says_so_at_once(random_fp8) -> None:
    engine = ChatEngine(str(random_fp8), device="cpu", queue_size=1, max_batch=1)
    loaded = engine.load()
    ids = loaded.tokenizer.encode("x")
    options = sampling_options(False, min_new_tokens=2000, max_new_tokens=2000)
    running = engine.submit(ids, options)
    while not engine.busy:
        time.sleep(0.01)
    waiting = engine.submit(ids, options)
    with pytest.raises(QueueFullError, match="queue is full") as caught:
        engine.submit(ids, options)
    assert caught.value.retry_after > 0
    running.cancel.set()
    waiting.cancel.set()
    for job in (running, waiting):
        while not isinstance(event := job.events.get(timeout=30), Finished):
            pass
        assert event.result.finish_reason == "cancelled"
    engine.close()


def test_a_generation_that_raises_ends_that_request_only(engine, monkeypatch) -> None:
    bot = Qwen3ChatBot(engine=engine)
    model = engine.load().model
    original = type(model).forward
    calls = {"n": 0}

    def flaky_forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated failure in the middle of a reply")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", flaky_forward)
    with pytest.raises(GenerationError, match="simulated failure"):
        bot.chat("Hi")
    monkeypatch.setattr(type(model), "forward", original)
    assert bot.chat("Hi again")["answer"] == SCRIPTED_ANSWER  # the engine kept serving


def test_two_bots_share_one_engine_but_not_history(engine) -> None:
    alice, bob = Qwen3ChatBot(engine=engine), Qwen3ChatBot(engine=engine)
    results = {}

    def talk(name, bot):
        results[name] = bot.chat(f"I am {name}")

    threads = [threading.Thread(target=talk, args=(n, b)) for n, b in (("alice", alice), ("bob", bob))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results["alice"]["answer"] == results["bob"]["answer"] == SCRIPTED_ANSWER
    assert alice.get_history()[0]["content"] == "I am alice"
    assert bob.get_history()[0]["content"] == "I am bob"


def test_structured_output_in_the_python_api(engine) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
        "required": ["answer", "sure"],
    }
    bot = Qwen3ChatBot(engine=engine)
    reply = bot.chat(
        "Is 7 prime?",
        enable_thinking=True,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}},
    )
    assert reply["thinking"] == SCRIPTED_THINKING  # the thinking stays free
    value = json.loads(reply["answer"])
    assert value["answer"] in ("yes", "no") and isinstance(value["sure"], bool)
    assert bot.get_history()[-1]["content"] == reply["answer"]
