"""Continuous batching on real (tiny) models: replies in a batch are the replies alone, requests end on
their own (cancel, stop strings, max tokens, errors), and clients take fair turns.

Nothing here measures speed; waits are bounds that turn a hang into a failure.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from helpers.app import CANCELLED_LINE, WAIT_LIMIT_SECONDS

from chatbot.chat.prompt import build_prompt
from chatbot.engine.engine import ChatEngine, Failed, Finished, Queued, TextDelta
from chatbot.engine.fair_queue import FairQueue
from chatbot.engine.jobs import Job
from chatbot.engine.sampling import sampling_options
from chatbot.errors import GenerationError, QueueFullError
from chatbot.model.loader import load_model


@pytest.fixture(scope="module")
def noisy(random_fp8):
    # Batch-invariant: rows decoded together run each as alone (by default a CPU batch of two or more
    # decodes from the faster prefill copy, and a matmul's rounding depends on its rows anyway): then a
    # reply in a batch can be checked against the same request alone, token for token.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QWEN_BATCH_INVARIANT", "1")
        return load_model(str(random_fp8), device="cpu")


@pytest.fixture(scope="module")
def scripted(scripted_fp8):
    return load_model(str(scripted_fp8), device="cpu")


def prompt(loaded, text: str, thinking: bool = False) -> list[int]:
    messages = [{"role": "user", "content": text}]
    return build_prompt(
        loaded.tokenizer, messages, enable_thinking=thinking, max_context=loaded.max_context, max_new_tokens=64
    ).ids


def collect(job, limit: float = WAIT_LIMIT_SECONDS):
    """(text deltas, final event) of a submitted job."""
    deltas = []
    deadline = time.monotonic() + limit
    while True:
        event = job.events.get(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        elif isinstance(event, Finished | Failed):
            return deltas, event


def results_of(engine, requests, client_of=lambda index: f"client {index}"):
    jobs = [engine.submit(ids, options, client=client_of(i)) for i, (ids, options) in enumerate(requests)]
    finals = []
    for job in jobs:
        deltas, event = collect(job)
        assert isinstance(event, Finished), event
        assert "".join(deltas) == event.result.text  # the stream adds up to the result
        finals.append(event.result)
    return finals


MIXED_REQUESTS = [
    ("Tell me a story about a cat.", dict(temperature=0, min_new_tokens=40, max_new_tokens=40)),
    ("Why is the sky blue?", dict(temperature=0.9, seed=7, min_new_tokens=30, max_new_tokens=30)),
    ("Count to twenty.", dict(temperature=0, max_new_tokens=9)),
    ("Say something long.", dict(temperature=1.1, top_k=0, top_p=0.9, seed=123, min_new_tokens=50, max_new_tokens=50)),
    ("Another question, with a repetition penalty.", dict(temperature=0, repetition_penalty=1.3, max_new_tokens=25)),
]


def test_batched_replies_equal_solo_replies_token_for_token(noisy) -> None:
    requests = [(prompt(noisy, text), sampling_options(False, **options)) for text, options in MIXED_REQUESTS]
    solo = ChatEngine.from_loaded(noisy, max_batch=1, prefix_cache_tokens=0)
    alone = [results_of(solo, [request])[0] for request in requests]
    solo.close()
    batched = ChatEngine.from_loaded(noisy, max_batch=4, prefix_cache_tokens=0)
    together = results_of(batched, requests)
    batched.close()
    for number, (single, shared) in enumerate(zip(alone, together, strict=True)):
        assert shared.token_ids == single.token_ids, f"request {number}"
        assert shared.text == single.text and shared.finish_reason == single.finish_reason
    assert [len(r.token_ids) for r in together] == [40, 30, 9, 50, 25]


def test_the_reason_names_what_batched_rows_decode_with(noisy, random_fp8) -> None:
    assert "requests decoded together run one by one, each as alone (QWEN_BATCH_INVARIANT=1)" in noisy.precision.reason
    default = load_model(str(random_fp8), device="cpu")  # the badge and /health show this reason
    assert "requests decoded together use the BF16 prefill copy" in default.precision.reason or (
        "requests decoded together use the FP32 prefill copy" in default.precision.reason
    )
    assert default.precision.details["batched_decode"] in default.precision.reason
    assert not default.model.qwen_batch_invariant


def test_batch_invariance_is_off_unless_asked_for() -> None:
    from chatbot.model.precision import batch_invariant_requested

    assert not batch_invariant_requested({}) and not batch_invariant_requested({"QWEN_BATCH_INVARIANT": "0"})
    assert batch_invariant_requested({"QWEN_BATCH_INVARIANT": "1"})
    with pytest.raises(ValueError, match="QWEN_BATCH_INVARIANT: input should be a valid boolean"):
        batch_invariant_requested({"QWEN_BATCH_INVARIANT": "maybe"})


def test_stop_strings_and_max_tokens_act_per_request_in_a_batch(scripted) -> None:
    from chatbot.authoring.modelgen import SCRIPTED_ANSWER

    ids = prompt(scripted, "Hi")
    word = SCRIPTED_ANSWER.split()[2]
    requests = [
        (ids, sampling_options(False, temperature=0)),
        (ids, sampling_options(False, temperature=0, stop=[word])),
        (ids, sampling_options(False, temperature=0, max_new_tokens=3)),
    ]
    engine = ChatEngine.from_loaded(scripted, max_batch=3)
    full, stopped, short = results_of(engine, requests)
    engine.close()
    assert full.finish_reason == "stop" and SCRIPTED_ANSWER in full.text
    assert stopped.finish_reason == "stop" and word not in stopped.text
    assert full.text.startswith(stopped.text) and len(stopped.text) < len(full.text)
    assert short.finish_reason == "length" and len(short.token_ids) == 3


def test_cancelling_one_request_leaves_the_others_running(noisy, caplog) -> None:
    engine = ChatEngine.from_loaded(noisy, max_batch=3, prefix_cache_tokens=0)
    long = sampling_options(False, temperature=0, min_new_tokens=3000, max_new_tokens=3000)
    short = sampling_options(False, temperature=0, min_new_tokens=30, max_new_tokens=30)
    doomed = engine.submit(prompt(noisy, "Go on forever"), long, client="a")
    others = [engine.submit(prompt(noisy, f"Question {i}"), short, client=f"b{i}") for i in range(2)]
    first = doomed.events.get(timeout=WAIT_LIMIT_SECONDS)
    while not isinstance(first, TextDelta):
        first = doomed.events.get(timeout=WAIT_LIMIT_SECONDS)
    with caplog.at_level("INFO", logger="chatbot.engine.scheduler"):
        doomed.cancel.set()
        _, event = collect(doomed)
    assert event.result.finish_reason == "cancelled" and event.result.stats.new_tokens < 3000
    made, most = map(int, CANCELLED_LINE.search(caplog.text).groups())
    assert made == event.result.stats.new_tokens and most == 3000
    for job in others:
        _, event = collect(job)
        assert event.result.finish_reason == "length" and event.result.stats.new_tokens == 30
    engine.close()


def test_a_request_failing_inside_a_batch_fails_alone(noisy, monkeypatch) -> None:
    engine = ChatEngine.from_loaded(noisy, max_batch=3, prefix_cache_tokens=0)
    poisoned = prompt(noisy, "This prompt is much longer than the others. " * 6)
    limit = len(poisoned) + 5  # only the long request ever reaches this position
    model = noisy.model
    original = type(model).forward

    def flaky_forward(self, *args, **kwargs):
        positions = kwargs.get("position_ids")
        if positions is not None and int(positions.max()) >= limit:
            raise RuntimeError("simulated failure at a long position")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", flaky_forward)
    options = sampling_options(False, temperature=0, min_new_tokens=20, max_new_tokens=20)
    jobs = [engine.submit(prompt(noisy, f"Short {i}"), options, client=f"c{i}") for i in range(2)]
    jobs.insert(1, engine.submit(poisoned, options, client="poison"))
    outcomes = [collect(job)[1] for job in jobs]
    monkeypatch.setattr(type(model), "forward", original)
    assert isinstance(outcomes[1], Failed) and isinstance(outcomes[1].error, GenerationError)
    assert "simulated failure" in outcomes[1].error.message
    for event in (outcomes[0], outcomes[2]):
        assert isinstance(event, Finished) and event.result.stats.new_tokens == 20
    engine.close()


def test_a_flooding_client_does_not_keep_another_waiting(noisy) -> None:
    engine = ChatEngine.from_loaded(noisy, max_batch=2, queue_size=6, prefix_cache_tokens=0)
    long = sampling_options(False, temperature=0, min_new_tokens=400, max_new_tokens=400)
    flood = [engine.submit(prompt(noisy, f"Flood {i}"), long, client="flooder") for i in range(2)]
    for job in flood:  # both slots stream the flooder's replies
        while not isinstance(job.events.get(timeout=WAIT_LIMIT_SECONDS), TextDelta):
            pass
    flood += [engine.submit(prompt(noisy, f"Flood {i}"), long, client="flooder") for i in range(2, 5)]
    with pytest.raises(QueueFullError, match="this client"):  # its share of the queue is taken (half of 6)
        engine.submit(prompt(noisy, "One more"), long, client="flooder")
    short = sampling_options(False, temperature=0, min_new_tokens=5, max_new_tokens=5)
    polite = engine.submit(prompt(noisy, "Just one question"), short, client="polite")
    _, event = collect(polite)
    assert isinstance(event, Finished) and event.result.finish_reason == "length"
    # It ran beside the flood (one of the flooder's replies was paused for it, and told so), not after it.
    assert not any(_finished(job) for job in flood)
    assert any(isinstance(e, Queued) and e.paused for job in flood[:2] for e in list(job.events.queue))
    for job in flood:
        job.cancel.set()
    for job in flood:
        assert isinstance(collect(job)[1], Finished)
    engine.close()


def test_a_long_batch_takes_turns_with_a_streaming_client(noisy) -> None:
    """run_batch (the batch command, generate_batch) submits its prompts as ordinary requests, a few at a time."""
    engine = ChatEngine.from_loaded(noisy, max_batch=2, queue_size=8, prefix_cache_tokens=0)
    long = sampling_options(False, temperature=0, min_new_tokens=60, max_new_tokens=60)
    prompts = [prompt(noisy, f"Batch prompt {i}") for i in range(6)]
    cancel = threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        outcome["results"] = engine.run_batch(prompts, long, cancel, client="batch")

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while not engine.occupancy()["running"]:
        assert time.monotonic() < deadline, "the batch never started"
        time.sleep(0.02)
    assert engine.queue_depth() <= 2  # never more in the queue than one client's share of max_batch
    short = sampling_options(False, temperature=0, min_new_tokens=5, max_new_tokens=5)
    _, event = collect(engine.submit(prompt(noisy, "A quick question"), short, client="chat"))
    assert isinstance(event, Finished) and event.result.stats.new_tokens == 5
    assert worker.is_alive(), "the streaming client waited for the whole batch"
    worker.join(WAIT_LIMIT_SECONDS * 3)
    results = outcome["results"]
    assert [r.finish_reason for r in results] == ["length"] * 6 and all(len(r.token_ids) == 60 for r in results)
    alone = ChatEngine.from_loaded(noisy, max_batch=1, prefix_cache_tokens=0)
    assert results_of(alone, [(prompts[3], long)])[0].token_ids == results[3].token_ids  # in input order
    alone.close()
    engine.close()


def _finished(job) -> bool:
    events = list(job.events.queue)
    return any(isinstance(e, Finished) for e in events)


def job(client: str, number: int) -> Job:
    return Job([1], sampling_options(False), threading.Event(), id=number, client=client)


def test_the_queue_serves_clients_round_robin() -> None:
    queue = FairQueue(size=10, client_limit=5)
    jobs = [job("a", 1), job("a", 2), job("a", 3), job("b", 4), job("b", 5), job("c", 6)]
    for j in jobs:
        queue.add(j)
    assert [j.id for j in queue.order([])] == [1, 4, 6, 2, 5, 3]
    # A client already running requests comes after those running none.
    assert [j.id for j in queue.order(["a"])] == [4, 6, 1, 5, 2, 3]
    served = [queue.pop(Counter()).id for _ in range(6)]
    assert served == [1, 4, 6, 2, 5, 3]


def test_a_client_over_its_share_of_slots_gives_one_up() -> None:
    queue = FairQueue(size=10)
    queue.add(job("b", 9))
    assert queue.over_share({"a": 4}, max_batch=4) == "a"  # b waits with none running: a's share is 2
    assert queue.over_share({"a": 2, "b": 2}, max_batch=4) is None
    assert FairQueue(size=10).over_share({"a": 4}, max_batch=4) is None  # nobody waits


def test_queue_positions_follow_the_turns(noisy) -> None:
    engine = ChatEngine.from_loaded(noisy, max_batch=1, prefix_cache_tokens=0)
    long = sampling_options(False, temperature=0, min_new_tokens=2000, max_new_tokens=2000)
    running = engine.submit(prompt(noisy, "First"), long, client="a")
    while not engine.busy:
        time.sleep(0.01)
    second_a = engine.submit(prompt(noisy, "Second"), long, client="a")
    first_b = engine.submit(prompt(noisy, "Other"), long, client="b")
    assert _positions(first_b)[-1] == 1  # b has nothing running: it goes before a's second request
    assert _positions(second_a)[-1] == 2
    for j in (running, second_a, first_b):
        j.cancel.set()
    for j in (running, second_a, first_b):
        assert isinstance(collect(j)[1], Finished)
    engine.close()


def _positions(job) -> list[int]:
    return [e.position for e in list(job.events.queue) if isinstance(e, Queued)]


def test_a_sticky_gpu_fault_ends_serving_with_restart_advice_not_a_retry_per_row_simulated(noisy, monkeypatch) -> None:
    """A fake CUDA fault in the batched decode: after one, no CUDA call can succeed in the process, so the
    rows are not retried one by one; every request fails with the advice and the engine says "failed"."""
    from chatbot.errors import DeviceFaultError

    engine = ChatEngine.from_loaded(noisy, max_batch=3, prefix_cache_tokens=0)
    calls = []

    def faulting_decode(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")

    monkeypatch.setattr("chatbot.engine.scheduler.decode_rows", faulting_decode)
    options = sampling_options(False, temperature=0, min_new_tokens=20, max_new_tokens=20)
    running = [engine.submit(prompt(noisy, f"Question {i}"), options, client=f"c{i}") for i in range(3)]
    waiting = engine.submit(prompt(noisy, "Waiting"), options, client="c0")
    for job in [*running, waiting]:
        event = collect(job)[1]
        assert isinstance(event, Failed) and isinstance(event.error, DeviceFaultError), event
        assert "illegal memory access" in event.error.message and "Restart the server" in event.error.fix
    assert len(calls) == 1  # one batched step faulted; no row was tried again alone
    assert engine.status == "failed" and isinstance(engine.load_error, DeviceFaultError)
    with pytest.raises(DeviceFaultError, match="Restart the server"):
        engine.submit(prompt(noisy, "Later"), options)
    engine.close()
