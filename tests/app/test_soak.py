"""Load and faults on one running app (random-weights tiny model), loopback only, bounded in time.

* Soak: 16 concurrent API streams and 4 web UI sessions for QWEN_SOAK_SECONDS (20 s here; the
  README's figures come from a longer run, e.g. QWEN_SOAK_SECONDS=300), each client going on past that
  until it has been served at least once. No errors; every client served; every API reply is the one
  its request gets when run alone (seeded); every UI session keeps its own history; a full queue
  answers 429 (API) or says so (UI) instead of piling up; memory after the soak is what it was after
  a warm-up that served the longest prompts.
* Cancellation storm: 50 start-then-cancel cycles (API disconnects and UI Stops); every generation
  the engine started was stopped early, and the next request is served.

Nothing here depends on the machine's speed: how many replies fit in the window is only reported.

Each run appends its figures to the JSON file named by QWEN_SOAK_REPORT, if set.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from gradio_client import Client
from helpers.app import WAIT_LIMIT_SECONDS, RunningApp, running_app
from helpers.clients import openai_client

SOAK_SECONDS = float(os.environ.get("QWEN_SOAK_SECONDS", "20"))
API_CLIENTS, UI_CLIENTS = 16, 4
QUEUE_SIZE = 12  # below the 20 clients, so the limit is exercised
PROMPTS = [f"Story number {i}: " + "once upon a time " * (i + 1) for i in range(4)]
REPLY_TOKENS = 24
# Memory grows with the longest prompt served (buffers sized to it), so the sessions' chats stay bounded
# in length, as people's do, and the test can tell growth from a leak.
UI_CONVERSATION_TURNS = 8


@pytest.fixture(scope="module")
def soak_app(random_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    # No prefix cache: then each seeded reply depends on its own request only, and can be checked.
    # Batches of up to 8 (the CPU default) decode from the 16-bit weights like a lone request (same
    # precision), so each reply can be checked against the same request run alone.
    args = ["--model", str(random_fp8), "--queue-size", str(QUEUE_SIZE), "--prefix-cache-tokens", "0"]
    env = {"QWEN_CPU_DECODE_ROWS": "16", "QWEN_BATCH_INVARIANT": "1"}  # batched replies compared with solo ones
    with running_app(args, tmp_path_factory.mktemp("soak") / "soak.log", env=env) as app:
        yield app


def api_reply(app: RunningApp, prompt: str, seed: int) -> str:
    """One streamed reply; raises openai.RateLimitError when the queue is full."""
    client = openai_client(app, timeout=120)
    stream = client.chat.completions.create(
        model="qwen3",
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        seed=seed,
        temperature=1.0,
        max_tokens=REPLY_TOKENS,
        extra_body={"min_tokens": REPLY_TOKENS},
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def write_report(figures: dict) -> None:
    target = os.environ.get("QWEN_SOAK_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(figures) + "\n")


def ui_message(client: Client, message: str) -> tuple[list[dict], str]:
    chat, _, notice, _ = client.predict(message=message, enable_thinking=False, max_new_tokens=16, api_name="/chat")
    return chat, notice


def test_soak_api_streams_and_ui_sessions(soak_app: RunningApp) -> None:
    # Warm-up: every API prompt once and one UI conversation of full length, so that buffers sized to the
    # longest prompt exist before memory is first read.
    expected = {(p, seed): api_reply(soak_app, PROMPTS[p], seed) for p in range(len(PROMPTS)) for seed in range(2)}
    warm_up = Client(soak_app.ui_url, verbose=False)
    for turn in range(UI_CONVERSATION_TURNS):
        assert ui_message(warm_up, f"Warm-up message {turn}")[1] == ""
    rss_start = soak_app.rss()
    deadline = time.monotonic() + SOAK_SECONDS
    # Past the window, a client that has not been served yet keeps trying, up to this bound.
    give_up = deadline + 3 * WAIT_LIMIT_SECONDS
    served: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    problems: list[str] = []
    lock = threading.Lock()

    def note(kind: str, problem: str | None = None, client: str | None = None) -> None:
        with lock:
            counts[kind] += 1
            if problem:
                problems.append(problem)
            if client:
                served[client] += 1

    def going_on(client: str) -> bool:
        now = time.monotonic()
        return now < deadline or (not served[client] and now < give_up)

    def api_client(index: int) -> None:
        chooser = random.Random(index)
        while going_on(f"api {index}"):
            key = (chooser.randrange(len(PROMPTS)), chooser.randrange(2))
            try:
                text = api_reply(soak_app, PROMPTS[key[0]], key[1])
            except openai.RateLimitError:
                note("api_rejected")
                time.sleep(0.2)
                continue
            except openai.APIError as exc:
                note("api_errors", f"API client {index}: {exc}")
                continue
            problem = None if text == expected[key] else f"API client {index} got another reply for {key}"
            note("api_replies", problem, f"api {index}")

    def ui_client(index: int) -> None:
        client = Client(soak_app.ui_url, verbose=False)
        sent = []
        while going_on(f"ui {index}"):
            if len(sent) == UI_CONVERSATION_TURNS:  # a user starts a new chat now and then
                client.predict(api_name="/clear")
                sent = []
            message = f"UI session {index}, message {len(sent)}"
            try:
                chat, notice = ui_message(client, message)
            except Exception as exc:  # any failure of the client is a soak failure, reported below
                note("ui_errors", f"UI session {index}: {exc}")
                continue
            if "queue is full" in notice:
                note("ui_rejected")
                time.sleep(0.2)
                continue
            if notice:
                note("ui_errors", f"UI session {index}: {notice}")
                continue
            sent.append(message)
            users = [
                m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]
                for m in chat
                if m["role"] == "user"
            ]
            problem = None if users == sent else f"UI session {index} sees {users}, sent {sent}"
            note("ui_replies", problem, f"ui {index}")

    samples = []
    with ThreadPoolExecutor(API_CLIENTS + UI_CLIENTS) as pool:
        futures = [pool.submit(api_client, i) for i in range(API_CLIENTS)]
        futures += [pool.submit(ui_client, i) for i in range(UI_CLIENTS)]
        while not all(f.done() for f in futures):
            samples.append(soak_app.rss())
            time.sleep(1)
        for future in futures:
            future.result()
    rss_end = soak_app.rss()
    figures = {
        "test": "soak",
        "seconds": SOAK_SECONDS,
        **counts,
        "rss_start_mib": rss_start / 2**20,
        "rss_end_mib": rss_end / 2**20,
        "rss_max_mib": max(samples, default=rss_end) / 2**20,
    }
    write_report(figures)
    print(figures)
    assert not problems, problems[:5]
    clients = [f"api {i}" for i in range(API_CLIENTS)] + [f"ui {i}" for i in range(UI_CLIENTS)]
    assert [client for client in clients if not served[client]] == [], "clients never served"
    # No leak: after the soak the process holds what it held after the warm-up, plus allocator noise.
    assert rss_end <= rss_start * 1.15 + 128 * 2**20, figures
    soak_app.wait_until_idle()


def test_fifty_start_then_cancel_cycles_leave_the_model_free(soak_app: RunningApp) -> None:
    most = 5000
    long = {"max_tokens": most, "extra_body": {"min_tokens": most}}
    client = openai_client(soak_app, timeout=WAIT_LIMIT_SECONDS)
    ui = Client(soak_app.ui_url, verbose=False)
    cancelled_before = len(soak_app.cancelled_generations())
    for cycle in range(50):
        if cycle % 2 == 0:  # an API client that hangs up after the first tokens
            stream = client.chat.completions.create(
                model="qwen3", messages=[{"role": "user", "content": "Go"}], stream=True, **long
            )
            next(iter(stream))
            stream.close()
        else:  # a UI user who presses Stop
            job = ui.submit(
                message="Go", enable_thinking=False, max_new_tokens=most, min_new_tokens=most, api_name="/chat"
            )
            deadline = time.monotonic() + WAIT_LIMIT_SECONDS
            while not job.outputs() and time.monotonic() < deadline:
                time.sleep(0.02)
            ui.predict(api_name="/stop")
            job.result(timeout=WAIT_LIMIT_SECONDS)
    soak_app.wait_until_idle()  # nothing left running or queued
    stopped = soak_app.cancelled_generations()[cancelled_before:]
    write_report({"test": "cancel storm", "cycles": 50, "generations_stopped": len(stopped)})
    # Every generation that had started was stopped by the engine, none ran on to its end.
    assert stopped and all(made < most_asked == most for made, most_asked in stopped), stopped
    reply = client.chat.completions.create(model="qwen3", messages=[{"role": "user", "content": "Now"}], max_tokens=4)
    assert reply.choices[0].finish_reason == "length"
