"""The server's Prometheus metrics (``GET /metrics`` on the API port), in a registry of their own.

``ServerMetrics`` holds one ``prometheus_client.CollectorRegistry`` per app (never the library's global
one, so two apps in one process, as tests start them, count apart). It is fed from two places:

* the backend's events (``metrics_backend.MeteredBackend`` wraps ``App.backend``, which the web chat and
  the API both call): replies by source and outcome, prompt and generated tokens, time to first token,
  inter-token latency, end-to-end latency and time in the queue. With ``--backend`` these are the front's
  own view of the remote server (its waits and its network included);
* the API's HTTP requests by endpoint and status (``api_metrics``' middleware).

Read at each scrape from ``Backend.status()``: running, waiting and paused requests, the queue's size and
the batch's, whether the backend is ready, the precision decision as an ``_info`` metric's labels, and the
model's load time. Every name starts with ``qwen3_``; docs/serving.md lists them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..chat.backend import Backend

PREFIX = "qwen3_"
# Seconds. The first token waits for the queue and the prompt: from tens of milliseconds on a GPU to
# minutes on a busy CPU.
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
# One token: a millisecond or two on a GPU, tens to hundreds of milliseconds on a CPU.
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
REQUEST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0)
OUTCOMES = ("stop", "length", "tool_calls", "cancelled", "error")


def source_of(client: str) -> str:
    """Where a request came from, by its fair-turn client key: "api", "web" (a browser session) or "local"."""
    if client.startswith("api:"):
        return "api"
    if client.startswith("ui:"):
        return "web"
    return "local"


class ServerMetrics:
    """The metrics of one app (see the module docstring); thread-safe, as ``prometheus_client`` is."""

    def __init__(self, backend: Backend) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.http_requests = Counter(
            PREFIX + "http_requests",
            "HTTP requests to the API port, by endpoint (the route, or 'other') and status code.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.replies = Counter(
            PREFIX + "replies",
            "Replies ended, by source (api, web, local) and outcome (stop, length, tool_calls, cancelled, "
            "error); each choice of a request with n > 1 is one reply.",
            ["source", "outcome"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens",
            "Prompt tokens of finished replies (a request's n choices count their prompt once).",
            ["source"],
            registry=registry,
        )
        self.generation_tokens = Counter(
            PREFIX + "generation_tokens",
            "Tokens generated (thinking and the end-of-turn token included).",
            ["source"],
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "From the request reaching the backend to its first streamed text: queue, prompt and first token.",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Time per generated token after the first: each reply's time from its first to its last text, "
            "one observation per token after the first.",
            buckets=INTER_TOKEN_BUCKETS,
            registry=registry,
        )
        self.request_latency = Histogram(
            PREFIX + "e2e_request_latency_seconds",
            "From the request reaching the backend to its end, queue included.",
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.queue_time = Histogram(
            PREFIX + "request_queue_seconds",
            "Time a reply waited for a running slot before it started.",
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        registry.register(StatusCollector(backend))

    def observe_reply(
        self,
        source: str,
        outcome: str,
        *,
        prompt_tokens: int,
        new_tokens: int,
        queue_seconds: float | None,
        first_seconds: float | None,
        decode_seconds: float | None,
        total_seconds: float,
    ) -> None:
        """Record one ended reply. ``first_seconds``: to its first text (None: none came); ``decode_seconds``:
        from the first text to the end, spread over the tokens after the first."""
        self.replies.labels(source, outcome).inc()
        if prompt_tokens:
            self.prompt_tokens.labels(source).inc(prompt_tokens)
        if new_tokens:
            self.generation_tokens.labels(source).inc(new_tokens)
        if first_seconds is not None:
            self.time_to_first_token.observe(first_seconds)
        if decode_seconds is not None and new_tokens > 1:
            per_token = decode_seconds / (new_tokens - 1)
            for _ in range(new_tokens - 1):
                self.inter_token_latency.observe(per_token)
        if queue_seconds is not None:
            self.queue_time.observe(queue_seconds)
        self.request_latency.observe(total_seconds)


class StatusCollector(Collector):
    """Gauges read from ``Backend.status()`` at each scrape: queue, readiness, precision, load time."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def describe(self) -> list[Metric]:
        return []  # the metrics depend on the backend's state; collected at each scrape only

    def collect(self) -> Iterator[Metric]:
        status = self.backend.status()
        queue = status.queue
        for name, key, text in (
            ("requests_running", "running", "Replies generating now."),
            ("requests_waiting", "waiting", "Requests waiting in the queue for a running slot."),
            ("requests_paused", "paused", "Replies paused mid-way to give another client its turn."),
            ("queue_size", "size", "The most requests that may wait (--queue-size)."),
            ("max_batch", "max_batch", "The most replies generated at once."),
        ):
            if key in queue:
                yield GaugeMetricFamily(PREFIX + name, text, value=float(queue[key]))
        ready = GaugeMetricFamily(PREFIX + "backend_ready", "1 when the backend serves, 0 while loading or failed.")
        ready.add_metric([], 1.0 if status.state == "ready" else 0.0)
        yield ready
        labels = precision_labels(status)
        if labels is not None:
            info = GaugeMetricFamily(
                PREFIX + "precision_info",
                "The precision decision (always 1; the labels carry it). With --backend: the precision the "
                "operator stated (--backend-precision), stated=true.",
                labels=list(labels),
            )
            info.add_metric(list(labels.values()), 1.0)
            yield info
        loaded: Any = self.backend.loaded
        seconds = getattr(loaded, "load_seconds", None)
        if seconds is not None:
            yield GaugeMetricFamily(
                PREFIX + "model_load_seconds", "How long loading the model took (a local model).", value=seconds
            )


def precision_labels(status: Any) -> dict[str, str] | None:
    """The ``precision_info`` labels: the decision of a model loaded here, else a remote's stated precision."""
    decision = status.precision
    if decision is not None:
        return {
            "mode": decision.mode,
            "label": decision.label,
            "dtype": decision.compute_dtype,
            "device": decision.device,
            "stated": "false",
        }
    remote = status.remote
    if remote is not None and remote.precision:
        return {"mode": remote.precision, "label": remote.precision, "dtype": "", "device": "remote", "stated": "true"}
    return None
