"""How replies are recorded in the metrics, with a scripted fake backend (no model, no server): outcomes,
tokens (a request's choices count their prompt once), a stream left early, an error, the HTTP counter.

Run: ``.venv/bin/python -m pytest tests/unit/test_metrics_recording.py -q``.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from chatbot.chat.backend import BackendStatus
from chatbot.chat.events import AnswerDelta, ChatDone, QueuePosition
from chatbot.chat.request import ChatRequest
from chatbot.engine.limits import ReplyLimits
from chatbot.engine.shared_prefill import SharedPrefill
from chatbot.errors import QueueFullError
from chatbot.serve.api_metrics import RequestCounter
from chatbot.serve.metrics import ServerMetrics
from chatbot.serve.metrics_backend import MeteredBackend

STATS = {"prompt_tokens": 10, "new_tokens": 4, "queue_seconds": 0.5}


class FakeBackend:
    """Streams a queue position, two pieces of answer and the end; or raises ``error``."""

    limits = ReplyLimits()
    loaded = None

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def status(self) -> BackendStatus:
        return BackendStatus(state="ready", queue={"running": 1, "waiting": 2, "paused": 0, "size": 16, "max_batch": 8})

    def stream(self, request: ChatRequest, cancel: Any = None):
        if self.error is not None:
            raise self.error
        yield QueuePosition(1)
        yield AnswerDelta("Hel")
        yield AnswerDelta("lo")
        yield ChatDone("", "Hello", "Hello", "stop", False, dict(STATS))


def value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def request(client: str = "api:127.0.0.1") -> ChatRequest:
    return ChatRequest.build([{"role": "user", "content": "Hi"}], client=client)


def test_a_reply_counts_its_outcome_tokens_and_latencies() -> None:
    metrics = ServerMetrics(FakeBackend())
    backend = MeteredBackend(FakeBackend(), metrics)
    events = list(backend.stream(request()))
    assert isinstance(events[-1], ChatDone)
    assert value(metrics, "qwen3_replies_total", source="api", outcome="stop") == 1
    assert value(metrics, "qwen3_prompt_tokens_total", source="api") == 10
    assert value(metrics, "qwen3_generation_tokens_total", source="api") == 4
    assert value(metrics, "qwen3_time_to_first_token_seconds_count") == 1
    assert value(metrics, "qwen3_inter_token_latency_seconds_count") == 3  # tokens after the first
    assert value(metrics, "qwen3_e2e_request_latency_seconds_count") == 1
    assert value(metrics, "qwen3_request_queue_seconds_sum") == pytest.approx(0.5)


def test_the_choices_of_one_request_count_their_prompt_once() -> None:
    metrics = ServerMetrics(FakeBackend())
    backend = MeteredBackend(FakeBackend(), metrics)
    shared = SharedPrefill()
    for index in range(3):
        list(backend.stream(request("ui:session").as_choice(index, shared)))
    assert value(metrics, "qwen3_replies_total", source="web", outcome="stop") == 3
    assert value(metrics, "qwen3_prompt_tokens_total", source="web") == 10
    assert value(metrics, "qwen3_generation_tokens_total", source="web") == 12


def test_seeds_of_choices_follow_the_index() -> None:
    seeded = ChatRequest.build([{"role": "user", "content": "Hi"}], seed=40, temperature=1.0)
    shared = SharedPrefill()
    assert [seeded.as_choice(i, shared).options.seed for i in range(3)] == [40, 41, 42]
    assert request().as_choice(2, shared).options.seed is None


def test_an_error_and_a_stream_left_early_are_counted() -> None:
    metrics = ServerMetrics(FakeBackend())
    failing = MeteredBackend(FakeBackend(QueueFullError("The queue is full.")), metrics)
    with pytest.raises(QueueFullError):
        list(failing.stream(request()))
    assert value(metrics, "qwen3_replies_total", source="api", outcome="error") == 1
    left = MeteredBackend(FakeBackend(), metrics).stream(request("local"))
    next(left), next(left)  # the first piece of text, then the caller goes away
    left.close()
    assert value(metrics, "qwen3_replies_total", source="local", outcome="cancelled") == 1
    assert value(metrics, "qwen3_time_to_first_token_seconds_count") == 1


def test_the_page_reads_the_queue_at_each_scrape() -> None:
    from prometheus_client import generate_latest

    metrics = ServerMetrics(FakeBackend())
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    assert families["qwen3_requests_waiting"].samples[0].value == 2
    assert families["qwen3_requests_running"].samples[0].value == 1
    assert families["qwen3_backend_ready"].samples[0].value == 1
    assert "qwen3_precision_info" not in families and "qwen3_model_load_seconds" not in families


def test_http_requests_are_counted_by_route_and_status() -> None:
    metrics = ServerMetrics(FakeBackend())
    api = FastAPI()

    @api.get("/items/{name}")
    def item(name: str) -> dict[str, str]:
        return {"name": name}

    api.add_middleware(RequestCounter, metrics=metrics)
    client = TestClient(api)
    client.get("/items/a"), client.get("/items/b"), client.get("/nowhere/1"), client.get("/nowhere/2")
    assert value(metrics, "qwen3_http_requests_total", endpoint="/items/{name}", status="200") == 2
    assert value(metrics, "qwen3_http_requests_total", endpoint="other", status="404") == 2
