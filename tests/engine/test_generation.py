"""The engine's decode loop on a real (tiny) model: streaming text, stop conditions, cancellation, cache reuse."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from transformers import AutoTokenizer

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING
from chatbot.chat.prompt import build_prompt
from chatbot.engine.constraints import Constraint
from chatbot.engine.engine import ChatEngine, Failed, Finished, TextDelta
from chatbot.engine.generation import IncrementalDetokenizer, PrefixCache, StopStringMatcher
from chatbot.engine.sampling import Sampler, sampling_options
from chatbot.model.loader import load_model


@pytest.fixture(scope="module")
def scripted(scripted_fp8):
    return load_model(str(scripted_fp8), device="cpu")


@pytest.fixture(scope="module")
def noisy(random_fp8):
    return load_model(str(random_fp8), device="cpu")


def prompt_for(loaded, text: str, thinking: bool) -> list[int]:
    return build_prompt(
        loaded.tokenizer,
        [{"role": "user", "content": text}],
        enable_thinking=thinking,
        max_context=loaded.max_context,
        max_new_tokens=64,
    ).ids


def run(loaded, ids, cache=None, cancel=None, on_piece=None, thinking=False, **options):
    """One reply through the engine, as the servers run it; ``cache`` stands in for its prefix cache."""
    engine = ChatEngine.from_loaded(loaded, max_batch=1, prefix_cache_tokens=0)
    if cache is not None:
        engine.prefix_cache = cache
    pieces: list[str] = []
    result = None
    try:
        for event in engine.stream(ids, sampling_options(thinking, **options), cancel):
            if isinstance(event, TextDelta):
                pieces.append(event.text)
                if on_piece:
                    on_piece(pieces)
            elif isinstance(event, Finished):
                result = event.result
            elif isinstance(event, Failed):
                raise event.error
    finally:
        engine.close()
    assert "".join(pieces) == result.text  # the stream adds up to the result
    return result, pieces


def test_scripted_model_writes_its_thinking_and_answer(scripted) -> None:
    result, pieces = run(scripted, prompt_for(scripted, "Hi", thinking=True), temperature=0)
    assert result.text == f"<think>{SCRIPTED_THINKING}</think>\n\n{SCRIPTED_ANSWER}"
    assert result.finish_reason == "stop" and len(pieces) > 10
    assert result.stats.new_tokens == len(result.token_ids) and result.stats.time_to_first_token > 0


def test_max_new_tokens_ends_with_length(scripted) -> None:
    result, _ = run(scripted, prompt_for(scripted, "Hi", thinking=False), temperature=0, max_new_tokens=3)
    assert result.finish_reason == "length" and len(result.token_ids) == 3
    assert result.text == "".join(["Hello!", " I am the", " **demo model**"])


def test_stop_string_ends_and_truncates(scripted) -> None:
    result, _ = run(scripted, prompt_for(scripted, "Hi", thinking=False), temperature=0, stop=["generated"])
    assert result.finish_reason == "stop"
    assert result.text == SCRIPTED_ANSWER.split("generated")[0]


def test_min_new_tokens_suppresses_the_end_of_turn(scripted) -> None:
    result, _ = run(
        scripted, prompt_for(scripted, "Hi", thinking=False), temperature=0, min_new_tokens=40, max_new_tokens=40
    )
    assert result.finish_reason == "length" and len(result.token_ids) == 40


def test_cancel_stops_within_one_step(noisy) -> None:
    cancel = threading.Event()

    def cancel_after_five(pieces):
        if len(pieces) == 5:
            cancel.set()

    result, _ = run(
        noisy,
        prompt_for(noisy, "Tell a long story", False),
        cancel=cancel,
        on_piece=cancel_after_five,
        min_new_tokens=500,
        max_new_tokens=500,
    )
    assert result.finish_reason == "cancelled"
    # The worker sees the signal at its next round; pieces it streamed meanwhile were already queued.
    assert len(result.token_ids) < 100  # nowhere near the 500 it was asked for


def test_seed_makes_sampling_reproducible(noisy) -> None:
    ids = prompt_for(noisy, "Once upon a time", False)
    first, _ = run(noisy, ids, seed=7, temperature=1.0, max_new_tokens=20)
    again, _ = run(noisy, ids, seed=7, temperature=1.0, max_new_tokens=20)
    other, _ = run(noisy, ids, seed=8, temperature=1.0, max_new_tokens=20)
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids


def test_prefix_cache_reuse_gives_the_same_tokens(noisy) -> None:
    cache = PrefixCache(4096)
    history = [{"role": "user", "content": "First question about rabbits"}]
    ids = build_prompt(noisy.tokenizer, history, enable_thinking=False, max_context=4096, max_new_tokens=32).ids
    first, _ = run(noisy, ids, cache=cache, temperature=0, max_new_tokens=12)
    follow_up = [*history, {"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
    ids2 = build_prompt(noisy.tokenizer, follow_up, enable_thinking=False, max_context=4096, max_new_tokens=32).ids
    cached, _ = run(noisy, ids2, cache=cache, temperature=0, max_new_tokens=12)
    fresh, _ = run(noisy, ids2, cache=None, temperature=0, max_new_tokens=12)
    assert cached.stats.cached_prompt_tokens > len(ids) // 2
    assert fresh.stats.cached_prompt_tokens == 0
    assert cached.token_ids == fresh.token_ids


def test_prefix_cache_evicts_beyond_its_budget(noisy) -> None:
    cache = PrefixCache(60)
    for text in ("one", "two", "three"):
        run(noisy, prompt_for(noisy, text * 3, False), cache=cache, temperature=0, max_new_tokens=10)
    assert 1 <= len(cache) <= 2


def test_detokenizer_streams_chinese_without_broken_characters(scripted_fp8) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(scripted_fp8))
    text = "子曰：学而时习之，不亦说乎？ Hello 你好！"
    ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.push(i) for i in ids] + [detokenizer.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_stop_matcher_holds_back_partial_matches() -> None:
    matcher = StopStringMatcher(("STOP",))
    assert matcher.push("abc ST") == ("abc ", False)
    assert matcher.push("O") == ("", False)
    assert matcher.push("P tail") == ("", True)
    matcher = StopStringMatcher(("STOP",))
    assert matcher.push("ST") == ("", False)
    assert matcher.push("ay") == ("STay", False)
    assert matcher.hit is None


def test_stop_matcher_names_the_stop_string_that_starts_first() -> None:
    matcher = StopStringMatcher(("later", "END", "x"))
    assert matcher.push("ab EN") == ("ab ", False)
    assert matcher.push("D later x") == ("", True)  # "END" starts before "later" and "x"
    assert matcher.hit == "END"


def test_extreme_but_valid_sampling_values_still_pick_a_token(noisy) -> None:
    ids = prompt_for(noisy, "Edge cases", False)
    for options in (
        {"temperature": 5e-324},
        {"top_p": 5e-324},
        {"min_p": 1.0},
        {"repetition_penalty": 0.01},
        {"presence_penalty": 2.0, "frequency_penalty": -2.0},
    ):
        result, _ = run(noisy, ids, max_new_tokens=4, seed=1, **options)
        assert len(result.token_ids) == 4, options


def test_fp16_overflow_while_decoding_is_recomputed_in_fp32(random_fp8, caplog) -> None:
    """Qwen3's large activations can overflow FP16: the step is redone with FP32 matmuls, not lost."""
    loaded = load_model(str(random_fp8), device="cpu", precision="fp16")
    down = loaded.model.model.layers[0].mlp.down_proj
    down.weight.data.fill_(60000.0)  # the largest FP16 values: their sums overflow FP16, not FP32
    ids = prompt_for(loaded, "Overflow, please", False)
    result, _ = run(loaded, ids, temperature=0, max_new_tokens=6, min_new_tokens=6)
    assert result.finish_reason == "length" and len(result.token_ids) == 6
    assert down.fp32_decode
    assert "FP16 overflow" in caplog.text


def test_a_seeded_request_ignores_a_warm_prefix_cache_so_its_reply_never_depends_on_the_last_one(noisy) -> None:
    cache = PrefixCache(4096)
    history = [{"role": "user", "content": "First question about rabbits"}]
    ids = build_prompt(noisy.tokenizer, history, enable_thinking=False, max_context=4096, max_new_tokens=32).ids
    run(noisy, ids, cache=cache, temperature=0, max_new_tokens=6)  # warms the cache with this prompt
    warm, _ = run(noisy, ids, cache=cache, seed=11, temperature=1.0, max_new_tokens=16)
    cold, _ = run(noisy, ids, cache=None, seed=11, temperature=1.0, max_new_tokens=16)
    assert warm.stats.cached_prompt_tokens == 0
    assert warm.token_ids == cold.token_ids


ENUM_SCHEMA = {
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["colour", "ok"],
    "additionalProperties": False,
}


def assert_enum_json(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"colour", "ok"} and value["colour"] in {"red", "green", "blue"}
    assert isinstance(value["ok"], bool)


def test_a_grammar_makes_even_random_weights_write_schema_valid_json(noisy) -> None:
    constraint = Constraint("json_schema", json.dumps(ENUM_SCHEMA))
    ids = prompt_for(noisy, "Pick a colour", False)
    for seed in range(3):
        result, _ = run(noisy, ids, seed=seed, temperature=1.0, max_new_tokens=60, constraint=constraint)
        assert result.finish_reason == "stop", result.text  # the grammar ends with the end-of-turn token
        assert_enum_json(result.text)


def test_the_grammar_waits_for_the_end_of_thinking(scripted) -> None:
    constraint = Constraint("json_schema", json.dumps(ENUM_SCHEMA), after_thinking=True)
    ids = prompt_for(scripted, "Pick a colour", True)
    result, _ = run(scripted, ids, thinking=True, max_new_tokens=120, constraint=constraint)
    thinking, _, answer = result.text.partition("</think>")
    assert thinking == f"<think>{SCRIPTED_THINKING}"  # thinking stays free
    assert result.finish_reason == "stop"
    assert_enum_json(answer.strip())


def test_logit_bias_and_logprobs_on_the_scripted_model(scripted) -> None:
    ids = prompt_for(scripted, "Hi", thinking=False)
    first_word = scripted.tokenizer.convert_tokens_to_ids("Hello!")
    plain, _ = run(scripted, ids, temperature=0, logprobs=True, top_logprobs=2)
    assert plain.text == SCRIPTED_ANSWER
    assert [record.token for record in plain.logprobs] == list(plain.token_ids)
    assert plain.logprobs[0].top[0][0] == first_word and len(plain.logprobs[0].top) == 2
    assert all(record.logprob <= 0 for record in plain.logprobs)
    banned, _ = run(scripted, ids, temperature=0, max_new_tokens=4, logit_bias={first_word: -100})
    assert banned.token_ids[0] != first_word


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_one_pass_finiteness_flag_of_a_pick_sees_any_inf_or_nan(bad, dtype) -> None:
    sampler = Sampler(sampling_options(False, temperature=0), [], (0,), torch.device("cpu"))
    logits = (torch.randn(151936) * 30).to(dtype)  # a 16-bit sum of these would overflow; the check sums in FP32
    assert sampler.pick(logits, 0)[1] == 1.0
    for position in (0, 77777, 151935):
        broken = logits.clone()
        broken[position] = bad
        assert sampler.pick(broken, 0)[1] == 0.0
