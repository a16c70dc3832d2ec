"""``n`` choices in one chat completion, through the ``openai`` package: streamed and not, each seeded
choice the reply its seed (``seed + index``) gets alone, the prompt counted once in the usage.

The random-weights model makes sampled choices differ; batch invariance (``QWEN_BATCH_INVARIANT=1``) makes
a choice decoded beside others the reply it gets alone, so they can be compared exactly. No prefix
cache: each solo reply reads its prompt as the choices' shared prefill did. Nothing measures speed.

Run: ``.venv/bin/python -m pytest tests/app/test_api_choices.py -q``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from helpers.app import WAIT_LIMIT_SECONDS, RunningApp, running_app
from helpers.clients import openai_client

SEED = 4242
CHOICES = 3
# Every choice writes exactly this many tokens: the random model might otherwise end one early.
SAMPLED = {
    "temperature": 1.0,
    "max_tokens": 12,
    "extra_body": {"min_tokens": 12, "top_k": 0, "chat_template_kwargs": {"enable_thinking": False}},  # all answer
}
ASK = [{"role": "user", "content": "Give me a name for a boat."}]


@pytest.fixture(scope="module")
def random_app(random_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    args = ["--model", str(random_fp8), "--prefix-cache-tokens", "0", "--max-batch", "4"]
    env = {"QWEN_CPU_DECODE_ROWS": "16", "QWEN_BATCH_INVARIANT": "1"}  # batched replies compared with solo ones
    with running_app(args, tmp_path_factory.mktemp("choices") / "choices.log", env=env) as app:
        yield app


@pytest.fixture(scope="module")
def client(random_app: RunningApp) -> openai.OpenAI:
    return openai_client(random_app, validate=True, timeout=WAIT_LIMIT_SECONDS)


def test_three_choices_equal_three_seeded_requests_alone(client) -> None:
    reply = client.chat.completions.create(model="qwen3", messages=ASK, n=CHOICES, seed=SEED, **SAMPLED)
    assert [choice.index for choice in reply.choices] == list(range(CHOICES))
    texts = [choice.message.content for choice in reply.choices]
    assert len(set(texts)) == CHOICES, texts  # sampled with three seeds: three replies
    alone = [
        client.chat.completions.create(model="qwen3", messages=ASK, seed=SEED + index, **SAMPLED)
        for index in range(CHOICES)
    ]
    assert texts == [solo.choices[0].message.content for solo in alone]
    assert [choice.finish_reason for choice in reply.choices] == ["length"] * CHOICES
    # The prompt counts once; each choice's tokens count.
    assert reply.usage.prompt_tokens == alone[0].usage.prompt_tokens
    assert reply.usage.completion_tokens == sum(solo.usage.completion_tokens for solo in alone) == 12 * CHOICES
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_choices_carry_their_index_and_add_up_to_the_same_replies(client) -> None:
    whole = client.chat.completions.create(model="qwen3", messages=ASK, n=CHOICES, seed=SEED + 10, **SAMPLED)
    stream = client.chat.completions.create(
        model="qwen3",
        messages=ASK,
        n=CHOICES,
        seed=SEED + 10,
        stream=True,
        stream_options={"include_usage": True},
        **SAMPLED,
    )
    texts: dict[int, str] = defaultdict(str)
    roles, finishes, usage = {}, {}, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles[choice.index] = choice.delta.role
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert roles == dict.fromkeys(range(CHOICES), "assistant")
    assert finishes == dict.fromkeys(range(CHOICES), "length")
    assert [texts[index] for index in range(CHOICES)] == [choice.message.content for choice in whole.choices]
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_choices_without_a_seed_differ_and_n_over_the_bound_is_refused(client) -> None:
    reply = client.chat.completions.create(model="qwen3", messages=ASK, n=2, **SAMPLED)
    assert len(reply.choices) == 2 and reply.choices[0].message.content != reply.choices[1].message.content
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="qwen3", messages=ASK, n=9)
    assert refused.value.body["param"] == "n"
    assert "at most 8" in refused.value.body["message"] or "limit of 8" in refused.value.body["message"]
