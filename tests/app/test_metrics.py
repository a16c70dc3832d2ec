"""``GET /metrics``: Prometheus text format on the API port, read back with ``prometheus_client``'s own parser.

Replies from the API and from the web chat count alike (both go through the app's one backend); the page
needs the key when the server has one. Nothing here measures speed: latencies are only checked to be
consistent (cumulative buckets, counts that match the replies).

Run: ``.venv/bin/python -m pytest tests/app/test_metrics.py -q``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from helpers.app import WAIT_LIMIT_SECONDS, RunningApp, running_app
from helpers.clients import openai_client
from helpers.openai_spec import assert_valid
from prometheus_client.parser import text_string_to_metric_families

KEY = "sk-metrics-5e1d"
HELLO = [{"role": "user", "content": "Hello"}]
HISTOGRAMS = (
    "qwen3_time_to_first_token_seconds",
    "qwen3_inter_token_latency_seconds",
    "qwen3_e2e_request_latency_seconds",
    "qwen3_request_queue_seconds",
)


@pytest.fixture(scope="module")
def keyed_app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    folder = tmp_path_factory.mktemp("metrics")
    with running_app(["--model", str(scripted_fp8), "--api-key", KEY], folder / "metrics.log") as app:
        yield app


class Scrape:
    """One read of ``/metrics``: the families by name, and each sample's value by (name, labels)."""

    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.values = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in self.families.values()
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.values.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(app: RunningApp) -> Scrape:
    response = httpx.get(app.api_url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return Scrape(response.text)


def wait_until_idle(app: RunningApp) -> Scrape:
    """The page once nothing runs, waits or is paused; fails after a generous bound (not a measurement)."""
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while True:
        metrics = scrape(app)
        busy = [name for name in ("running", "waiting", "paused") if metrics.value(f"qwen3_requests_{name}")]
        if not busy:
            return metrics
        assert time.monotonic() < deadline, f"still {busy} after {WAIT_LIMIT_SECONDS:.0f} s"
        time.sleep(0.05)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["no key", "wrong key"])
def test_metrics_need_the_key_when_the_server_has_one(keyed_app, headers) -> None:
    response = httpx.get(keyed_app.api_url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 401, response.text
    assert_valid("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert "qwen3_" not in response.text


def test_counters_move_and_histograms_stay_consistent(keyed_app) -> None:
    before = scrape(keyed_app)
    client = openai_client(keyed_app, api_key=KEY)
    plain = client.chat.completions.create(model="qwen3", messages=HELLO)
    streamed = client.chat.completions.create(
        model="qwen3", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    usage = [chunk.usage for chunk in streamed if chunk.usage is not None][-1]
    refused = httpx.post(
        keyed_app.api_url + "/v1/chat/completions",
        json={"messages": HELLO, "n": 9},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert refused.status_code == 400
    web = Client(keyed_app.ui_url, verbose=False)
    web.predict(message="Hello from the web chat", enable_thinking=False, api_name="/chat")
    after = scrape(keyed_app)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    chat = "/v1/chat/completions"
    assert moved("qwen3_http_requests_total", endpoint=chat, status="200") == 2
    assert moved("qwen3_http_requests_total", endpoint=chat, status="400") == 1
    assert moved("qwen3_http_requests_total", endpoint="/metrics", status="200") >= 1
    assert moved("qwen3_replies_total", source="api", outcome="stop") == 2
    assert moved("qwen3_replies_total", source="web", outcome="stop") == 1
    api_prompt = plain.usage.prompt_tokens + usage.prompt_tokens
    api_generated = plain.usage.completion_tokens + usage.completion_tokens
    assert moved("qwen3_prompt_tokens_total", source="api") == api_prompt
    assert moved("qwen3_generation_tokens_total", source="api") == api_generated
    assert moved("qwen3_generation_tokens_total", source="web") > 0

    for name in HISTOGRAMS:
        family = after.families[name]
        assert family.type == "histogram"
        buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name == name + "_bucket"]
        assert buckets == sorted(buckets) and buckets[-1][0] == float("inf")
        counts = [count for _, count in buckets]
        assert counts == sorted(counts), f"{name}: buckets are not cumulative: {counts}"
        assert counts[-1] == after.value(name + "_count"), name
        assert after.value(name + "_sum") >= 0
    for name in ("qwen3_time_to_first_token_seconds", "qwen3_e2e_request_latency_seconds"):
        assert moved(name + "_count") == 3, name  # two API replies and one from the web chat
    # One observation per token after the first: exact for the API replies, at least one from the web chat's.
    assert moved("qwen3_inter_token_latency_seconds_count") > api_generated - 2


def test_gauges_show_the_queue_the_precision_and_the_load(keyed_app) -> None:
    metrics = wait_until_idle(keyed_app)
    assert metrics.value("qwen3_requests_running") == 0
    assert metrics.value("qwen3_requests_waiting") == 0
    assert metrics.value("qwen3_requests_paused") == 0
    assert metrics.value("qwen3_queue_size") == 16
    assert metrics.value("qwen3_backend_ready") == 1
    assert metrics.value("qwen3_model_load_seconds") > 0
    health = httpx.get(keyed_app.api_url + "/health", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    (info,) = metrics.families["qwen3_precision_info"].samples
    assert info.value == 1
    assert info.labels["mode"] == health["precision"]["mode"]
    assert info.labels["label"] == health["precision"]["label"]
    assert info.labels["device"] == "cpu" and info.labels["stated"] == "false"


def test_requests_waiting_and_running_are_counted_while_they_are(keyed_app) -> None:
    """A long reply runs while the page is read: running shows it (a bound on the wait, not a measurement)."""
    client = openai_client(keyed_app, api_key=KEY, timeout=WAIT_LIMIT_SECONDS)
    stream = client.chat.completions.create(
        model="qwen3", messages=HELLO, stream=True, max_tokens=4000, extra_body={"min_tokens": 4000}
    )
    next(iter(stream))  # the reply has started
    try:
        assert scrape(keyed_app).value("qwen3_requests_running") == 1
    finally:
        stream.close()
    wait_until_idle(keyed_app)
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS  # the stopped reply is recorded as its thread ends
    while not scrape(keyed_app).value("qwen3_replies_total", source="api", outcome="cancelled"):
        assert time.monotonic() < deadline, "the stopped reply was never counted as cancelled"
        time.sleep(0.05)
