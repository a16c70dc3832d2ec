"""``--backend URL`` with ``n`` and ``/metrics``: the front runs one remote request per choice, and its
``/metrics`` are its own view of the replies it relayed (the remote's waits and the network included).

Run: ``.venv/bin/python -m pytest tests/app/test_remote_choices_metrics.py -q``.
"""

from __future__ import annotations

from collections import defaultdict

import httpx
from helpers.app import WAIT_LIMIT_SECONDS
from helpers.clients import openai_client
from prometheus_client.parser import text_string_to_metric_families

ASK = [{"role": "user", "content": "Hello"}]


def samples(app) -> dict[tuple[str, tuple], float]:
    text = httpx.get(app.api_url + "/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_choices_behind_a_backend_are_one_remote_request_each(front, remote) -> None:
    client = openai_client(front, validate=True, timeout=WAIT_LIMIT_SECONDS)
    before = samples(remote)
    reply = client.chat.completions.create(model="qwen3", messages=ASK, n=2, seed=11, temperature=0.7)
    assert [choice.index for choice in reply.choices] == [0, 1]
    assert all(choice.message.content and choice.finish_reason == "stop" for choice in reply.choices)
    solo = client.chat.completions.create(model="qwen3", messages=ASK, seed=11, temperature=0.7)
    assert reply.usage.prompt_tokens == solo.usage.prompt_tokens  # the prompt counts once
    assert reply.usage.completion_tokens == sum(choice_tokens(client, 11 + i) for i in range(2))
    # The remote answered one request per choice (and one for each solo request above).
    key = ("qwen3_replies_total", (("outcome", "stop"), ("source", "api")))
    assert samples(remote)[key] - before.get(key, 0.0) == 5

    stream = client.chat.completions.create(model="qwen3", messages=ASK, n=2, seed=11, temperature=0.7, stream=True)
    texts: dict[int, str] = defaultdict(str)
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert sorted(texts) == [0, 1] and all(texts.values())


def choice_tokens(client, seed: int) -> int:
    reply = client.chat.completions.create(model="qwen3", messages=ASK, seed=seed, temperature=0.7)
    return reply.usage.completion_tokens


def test_the_front_counts_the_replies_it_relays(front) -> None:
    before = samples(front)
    client = openai_client(front, timeout=WAIT_LIMIT_SECONDS)
    reply = client.chat.completions.create(model="qwen3", messages=ASK)
    after = samples(front)
    api = (("source", "api"),)
    assert after[("qwen3_generation_tokens_total", api)] - before.get(("qwen3_generation_tokens_total", api), 0) == (
        reply.usage.completion_tokens
    )
    assert after[("qwen3_time_to_first_token_seconds_count", ())] > before.get(
        ("qwen3_time_to_first_token_seconds_count", ()), 0
    )
    # The precision is the operator's statement (--backend-precision fp8); nothing was loaded here.
    info = [labels for (name, labels), _ in after.items() if name == "qwen3_precision_info"]
    assert info and dict(info[0])["mode"] == "fp8" and dict(info[0])["stated"] == "true"
    assert not any(name == "qwen3_model_load_seconds" for name, _ in after)
    assert ("qwen3_requests_running", ()) in after and ("qwen3_requests_waiting", ()) in after
