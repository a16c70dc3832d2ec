"""Tool calls and structured output on the real Qwen3 tokenizer and chat template.

The prompt a user's checkpoint gets (tools in the system turn, calls and results in the history, a
continued final message), the parsing of ``<tool_call>`` blocks whole and streamed in any pieces,
and the grammar over Qwen3's real 151,936-token vocabulary (random logits must still come out as a
valid call or schema-valid JSON). Run: ``.venv/bin/python -m pytest tests/engine/test_tools.py -q``.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.tools import WEATHER  # the same tool through the API (tests/app/test_api_tools.py)
from hypothesis import given, settings
from hypothesis import strategies as st

from chatbot.chat.prompt import Prompt, build_prompt
from chatbot.chat.reply import ChatDone, ThinkingDelta, ToolCallDelta, run_reply
from chatbot.chat.structured import response_format_constraint
from chatbot.chat.tools import ToolCallStream, parse_tool_calls, tool_call_constraint
from chatbot.engine.constraints import Constraint
from chatbot.engine.engine import Finished, TextDelta
from chatbot.engine.generation import GenerationResult, GenerationStats
from chatbot.engine.sampling import Sampler, sampling_options
from chatbot.errors import ContextLengthError, InvalidRequestError

QWEN3_VOCAB = 151936  # Qwen3-0.6B's embedding rows (the tokenizer has 151,669 tokens)
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}, "required": []}},
}


def rendered(tokenizer, messages, tools=None, thinking=False) -> str:
    ids = build_prompt(
        tokenizer, messages, enable_thinking=thinking, max_context=32768, max_new_tokens=64, tools=tools
    ).ids
    return tokenizer.decode(ids)


def test_tools_are_rendered_by_qwen3s_own_template(qwen3_tokenizer) -> None:
    text = rendered(
        qwen3_tokenizer, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], [WEATHER]
    )
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions")
    assert json.dumps(WEATHER, ensure_ascii=False) in text  # tojson of the tool, as the template writes it
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>' in text
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_calls_and_results_in_the_history_render_as_qwen3_expects(qwen3_tokenizer) -> None:
    messages = [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "system", "content": "Answer in French."},
    ]
    text = rendered(qwen3_tokenizer, messages, [WEATHER])
    assert text.startswith("<|im_start|>system\nUse tools.\n\n# Tools")  # developer is a system message
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n'
        '</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>assistant\n"
    ) in text


def test_a_final_assistant_message_is_continued(qwen3_tokenizer) -> None:
    messages = [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "One, two,"}]
    prompt = build_prompt(qwen3_tokenizer, messages, enable_thinking=False, max_context=512, max_new_tokens=8)
    assert prompt.continues
    assert qwen3_tokenizer.decode(prompt.ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nOne, two,")


def test_the_api_rules_refuse_a_conversation_that_does_not_fit_in_openais_words(qwen3_tokenizer) -> None:
    messages = [{"role": "user", "content": "word " * 300}]
    with pytest.raises(ContextLengthError) as caught:
        build_prompt(qwen3_tokenizer, messages, enable_thinking=False, max_context=256, max_new_tokens=None, trim=False)
    assert str(caught.value).startswith("This model's maximum context length is 256 tokens. However, your messages")
    with pytest.raises(ContextLengthError, match=r"However, you requested \d+ tokens \(\d+ in the messages, 10 in"):
        build_prompt(qwen3_tokenizer, messages, enable_thinking=False, max_context=256, max_new_tokens=10, trim=False)


# --- parsing ---------------------------------------------------------------------------------------------------

REPLY = (
    "Let me check.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>\n<tool_call>\n'
    '{"name": "get_time", "arguments": {}}\n</tool_call>'
)


def test_tool_call_blocks_become_calls_and_the_rest_stays_content() -> None:
    content, calls = parse_tool_calls(REPLY)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "C"}),
        ("get_time", {}),
    ]
    assert all(c.id.startswith("call_") for c in calls) and len({c.id for c in calls}) == 2


def test_a_broken_or_unfinished_block_stays_text() -> None:
    assert parse_tool_calls("<tool_call>\nnot json\n</tool_call>") == ("<tool_call>\nnot json\n</tool_call>", [])
    assert parse_tool_calls('Sure <tool_call>\n{"name": "f"')[1] == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(REPLY)), max_size=12))
def test_streamed_in_any_pieces_the_calls_and_content_match_the_whole_reply(cuts) -> None:
    points = sorted(set(cuts))
    pieces = [REPLY[a:b] for a, b in zip([0, *points], [*points, len(REPLY)], strict=True)]
    stream = ToolCallStream()
    out = [item for piece in pieces for item in stream.feed(piece)] + stream.finish()
    content = "".join(value for kind, value in out if kind == "content")
    calls = [value for kind, value in out if kind == "tool_call"]
    whole_content, whole_calls = parse_tool_calls(REPLY)
    assert content == whole_content
    assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in whole_calls]


def test_tool_choice_checks() -> None:
    assert tool_call_constraint([WEATHER], "auto", parallel=True, after_thinking=False) is None
    with pytest.raises(InvalidRequestError) as caught:
        tool_call_constraint(
            [WEATHER], {"type": "function", "function": {"name": "nope"}}, parallel=True, after_thinking=False
        )
    assert caught.value.param == "tool_choice"
    with pytest.raises(InvalidRequestError):
        tool_call_constraint([], "required", parallel=True, after_thinking=False)


# --- the grammar on Qwen3's vocabulary ----------------------------------------------------------------------------


def constrained_text(tokenizer, constraint: Constraint, seed: int, steps: int = 200) -> str:
    """Sample from random logits under ``constraint`` until the end-of-turn token; the text written."""
    eos = (tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    options = sampling_options(False, temperature=1.0, top_k=0, top_p=1.0, seed=seed, constraint=constraint)
    sampler = Sampler(options, [], eos, torch.device("cpu"), tokenizer)
    noise = torch.Generator().manual_seed(seed)
    tokens: list[int] = []
    for _ in range(steps):
        token = sampler.next_token(torch.randn(QWEN3_VOCAB, generator=noise) * 3, len(tokens))
        if token in eos:
            return tokenizer.decode(tokens)
        tokens.append(token)
    raise AssertionError(f"no end of turn after {steps} tokens: {tokenizer.decode(tokens)!r}")


@pytest.mark.parametrize("seed", range(3))
def test_random_logits_under_a_named_tool_choice_give_exactly_one_valid_call(qwen3_tokenizer, seed) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    constraint = tool_call_constraint([WEATHER, TIME], choice, parallel=True, after_thinking=False)
    text = constrained_text(qwen3_tokenizer, constraint, seed)
    content, calls = parse_tool_calls(text)
    assert content == "" and len(calls) == 1 and calls[0].name == "get_weather"
    arguments = json.loads(calls[0].arguments)
    assert arguments["city"] in {"Paris", "Tokyo"} and arguments["unit"] in {"C", "F"}


@pytest.mark.parametrize("seed", range(3))
def test_random_logits_under_a_json_schema_give_schema_valid_json(qwen3_tokenizer, seed) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
        "required": ["answer", "sure"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}}
    value = json.loads(constrained_text(qwen3_tokenizer, response_format_constraint(fmt, after_thinking=False), seed))
    assert set(value) == {"answer", "sure"} and value["answer"] in {"yes", "no"} and isinstance(value["sure"], bool)


def test_an_unusable_schema_is_a_request_error() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        Constraint("json_schema", json.dumps({"type": "object", "properties": {"a": {"type": "nonsense"}}})).grammar()
    assert caught.value.param == "response_format"
    with pytest.raises(InvalidRequestError):
        response_format_constraint({"type": "xml"}, after_thinking=False)


class ScriptedStream:
    """Stands in for the engine's stream only: replays a reply's text in pieces, as the decode loop emits it."""

    def __init__(self, text: str, piece: int = 3) -> None:
        self.text, self.piece = text, piece

    def stream(self, prompt_ids, options, cancel, client=None):
        for start in range(0, len(self.text), self.piece):
            yield TextDelta(self.text[start : start + self.piece])
        yield Finished(GenerationResult(self.text, (), "stop", GenerationStats()))


def test_a_tool_call_written_while_thinking_is_not_a_call() -> None:
    call = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    text = f"<think>Maybe {call} would help.</think>\n\nI know it: {call}"
    prompt = Prompt([], True, 0)
    events = list(run_reply(ScriptedStream(text), None, prompt, sampling_options(True), None, True, True, None))
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    assert call in thinking
    streamed = [e.call.name for e in events if isinstance(e, ToolCallDelta)]
    done = events[-1]
    assert isinstance(done, ChatDone) and streamed == ["get_time"]
    assert [c.name for c in done.tool_calls] == ["get_time"] and done.finish_reason == "tool_calls"
    assert done.answer == "I know it:" and call in done.thinking


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    prompt = Prompt([], False, 0)
    stream = ScriptedStream(REPLY)
    events = list(run_reply(stream, None, prompt, sampling_options(False), None, False, True, None, max_calls=1))
    assert [e.call.name for e in events if isinstance(e, ToolCallDelta)] == ["get_weather"]
    assert [c.name for c in events[-1].tool_calls] == ["get_weather"]
