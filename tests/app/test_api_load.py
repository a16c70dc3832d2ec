"""The API under load on the random-weights model: disconnects, concurrent clients, a full queue.

The random model writes noise, but ``min_tokens`` makes its replies as long as a test needs and a
seed makes them reproducible, so a reply can be compared with the same request run again alone.
Run: ``.venv/bin/python -m pytest tests/app/test_api_load.py -q``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from helpers.app import WAIT_LIMIT_SECONDS, RunningApp, running_app
from helpers.clients import openai_client

# Long enough that a generation nobody stops would hold the model for many seconds.
LONG_REPLY_TOKENS = 7000
# Thinking off: the random model may think for the whole reply, and the tests count answer chunks.
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
LONG_REPLY = {"max_tokens": LONG_REPLY_TOKENS, "extra_body": {"min_tokens": LONG_REPLY_TOKENS, **NO_THINKING}}


@pytest.fixture(scope="module")
def random_api(random_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    # Without the prefix cache each reply depends on its own request only: a prompt continued from
    # another conversation's cached prefix is computed in other chunk sizes (and on CPU possibly in
    # another prefill dtype), which changes the last bits of the logits, and random weights turn
    # that into other text.
    # Four running slots for eight concurrent clients: four replies are generated together (continuous
    # batching) while the others wait their turn.
    # Batches decode from the 16-bit weights as a lone request does (see tests/engine/test_batching.py).
    args = ["--model", str(random_fp8), "--prefix-cache-tokens", "0", "--max-batch", "4"]
    env = {"QWEN_CPU_DECODE_ROWS": "16", "QWEN_BATCH_INVARIANT": "1"}  # batched replies compared with solo ones
    with running_app(args, tmp_path_factory.mktemp("logs") / "random_api.log", env=env) as app:
        yield app


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def health(app: RunningApp) -> dict:
    return app.health()


def assert_stopped_early_and_free(app: RunningApp, client: openai.OpenAI, how: str) -> None:
    """The long generation was stopped by the engine (not run to its end), and the model serves again."""
    app.wait_for_log(f"the client disconnected {how}; generation stopped")
    app.wait_until_idle()
    made, most = app.cancelled_generations()[-1]
    assert most == LONG_REPLY_TOKENS and made < LONG_REPLY_TOKENS
    free = {"max_tokens": 4, "extra_body": {"min_tokens": 4}}  # random weights may end a reply early otherwise
    reply = client.chat.completions.create(model="qwen3", messages=ask("Are you free?"), **free)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4


def test_a_client_that_disconnects_mid_stream_frees_the_model(random_api) -> None:
    client = openai_client(random_api)
    long = client.chat.completions.create(
        model="qwen3", messages=ask("Talk for a long time."), stream=True, **LONG_REPLY
    )
    received = 0
    for chunk in long:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 5:
            break
    assert health(random_api)["queue"]["busy"]
    long.close()  # hang up mid-reply

    assert_stopped_early_and_free(random_api, client, "mid-stream")


def test_a_client_that_gives_up_waiting_for_a_plain_reply_frees_the_model(random_api) -> None:
    impatient = openai_client(random_api, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="qwen3", messages=ask("Take your time."), **LONG_REPLY)

    assert_stopped_early_and_free(random_api, openai_client(random_api), "before the reply")


@dataclass(frozen=True)
class StreamedReply:
    ids: frozenset[str]
    reasoning: str
    content: str
    finish_reason: str | None
    completion_tokens: int


CLIENTS = 8
REPLY_TOKENS = 80


def streamed_reply(app: RunningApp, number: int) -> StreamedReply:
    """Client ``number``'s request: its own prompt and seed, thinking on for every other one."""
    stream = openai_client(app).chat.completions.create(
        model="qwen3",
        messages=ask(f"Client {number} asks question number {number * 7}."),
        stream=True,
        stream_options={"include_usage": True},
        seed=1000 + number,
        max_tokens=REPLY_TOKENS,
        extra_body={"min_tokens": REPLY_TOKENS, "enable_thinking": number % 2 == 0},
    )
    chunks = list(stream)
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    return StreamedReply(
        frozenset(chunk.id for chunk in chunks),
        "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas),
        "".join(delta.content or "" for delta in deltas),
        finishes[-1] if finishes else None,
        chunks[-1].usage.completion_tokens,
    )


def test_eight_concurrent_streams_are_complete_and_each_matches_its_request_run_alone(random_api) -> None:
    depths: list[int] = []
    watching = threading.Event()

    def watch_queue() -> None:
        while not watching.is_set():
            depths.append(httpx.get(random_api.api_url + "/health").json()["queue"]["depth"])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_queue)
    watcher.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            together = list(pool.map(lambda number: streamed_reply(random_api, number), range(CLIENTS)))
    finally:
        watching.set()
        watcher.join()
    alone = [streamed_reply(random_api, number) for number in range(CLIENTS)]

    assert max(depths) >= 1  # the requests really waited for each other
    for number, (shared, single) in enumerate(zip(together, alone, strict=True)):
        assert len(shared.ids) == 1, f"client {number} got chunks of several completions"
        assert shared.finish_reason == "length" and shared.completion_tokens == REPLY_TOKENS
        assert (shared.reasoning, shared.content) == (single.reasoning, single.content), f"client {number}"
        assert bool(shared.reasoning) == (number % 2 == 0)  # thinking only where it was asked for
    assert len({next(iter(reply.ids)) for reply in together}) == CLIENTS
    assert len({reply.content + reply.reasoning for reply in together}) == CLIENTS  # no two alike


@pytest.fixture
def one_slot_api(random_fp8: Path, tmp_path: Path) -> Iterator[RunningApp]:
    # One running slot: the second request waits and fills the one queue place.
    args = ["--model", str(random_fp8), "--queue-size", "1", "--max-batch", "1"]
    with running_app(args, tmp_path / "one_slot_api.log") as app:
        yield app


def test_a_full_queue_answers_429_with_retry_after(one_slot_api) -> None:
    client = openai_client(one_slot_api)
    running = client.chat.completions.create(model="qwen3", messages=ask("First."), stream=True, **LONG_REPLY)
    waiting = client.chat.completions.create(model="qwen3", messages=ask("Second."), stream=True, **LONG_REPLY)
    try:
        queue = health(one_slot_api)["queue"]
        assert queue == {"running": 1, "waiting": 1, "paused": 0, "max_batch": 1, "depth": 1, "size": 1, "busy": True}
        rejected = httpx.post(
            one_slot_api.api_url + "/v1/chat/completions", json={"messages": ask("Third."), "stream": True}
        )
        assert rejected.status_code == 429
        assert rejected.headers["Retry-After"] == "5"
        error = rejected.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("rate_limit_error", "queue_full", None)
        assert "queue is full" in error["message"]
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="qwen3", messages=ask("Fourth."))

        # a waiting client that hangs up gives its place back while the first one still runs
        waiting.close()
        wait_until_queue_empty(one_slot_api)
        replacement = client.chat.completions.create(model="qwen3", messages=ask("Fifth."), stream=True, max_tokens=4)
        assert health(one_slot_api)["queue"]["busy"]  # the first reply was never interrupted
    finally:
        running.close()
        waiting.close()
    finishes = [chunk.choices[0].finish_reason for chunk in replacement if chunk.choices]
    assert finishes[-1] in ("stop", "length")  # it ran as soon as the first one hung up
    one_slot_api.wait_until_idle()


def wait_until_queue_empty(app: RunningApp, limit: float = WAIT_LIMIT_SECONDS) -> None:
    deadline = time.monotonic() + limit
    while health(app)["queue"]["depth"]:
        assert time.monotonic() < deadline, f"a request still waits after {limit:.0f} s"
        time.sleep(0.05)
