"""``python -m chatbot doctor --backend URL``: is the OpenAI-compatible server at URL usable by this app?

Checks, each printed with its fix when it fails: the server answers ``GET /v1/models`` (and the
model to use is listed; its context length when reported), a one-token chat completes, and how
thinking arrives (``reasoning_content``, raw ``<think>`` in ``content``, or not at all), with the
round-trip times. Exit status 1 when there is a problem.
"""

from __future__ import annotations

import sys
import time

import openai

from ..chat.remote import PROBE_TIMEOUT_SECONDS
from ..chat.remote_stream import RemoteReply, backend_error, request_body
from ..engine.sampling import sampling_options
from ..errors import ChatbotError
from ..settings import Settings
from .doctor import Report

THINKING_PROBE_TOKENS = 64  # enough for Qwen3 to open and write some of its thinking
CHAT_TIMEOUT_SECONDS = 120.0


def stream_once(client: openai.OpenAI, body: dict, thinking: bool) -> tuple[RemoteReply, float]:
    """Run one streamed request; returns what came back and the seconds it took."""
    reply = RemoteReply(thinking)
    started = time.perf_counter()
    stream = client.chat.completions.create(**body, timeout=CHAT_TIMEOUT_SECONDS)
    with stream:
        for chunk in stream:
            reply.feed(chunk)
    return reply, time.perf_counter() - started


def run_remote_doctor(settings: Settings) -> int:
    url = settings.backend
    assert url is not None
    report = Report()
    report.section(f"Model server: {url}")
    key = settings.backend_api_key.get_secret_value() if settings.backend_api_key is not None else "none"
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
    try:
        started = time.perf_counter()
        cards = list(client.models.list(timeout=PROBE_TIMEOUT_SECONDS).data)
        seconds = time.perf_counter() - started
    except openai.APIError as exc:
        report.problem(backend_error(exc, url))
        return finish(report)
    report.ok(f"reachable: GET /v1/models answered in {seconds * 1000:.0f} ms")
    models = [card.id for card in cards]
    if not models:
        report.problem(ChatbotError("The server lists no models.", fix="Check that it has loaded one."))
        return finish(report)
    model = settings.backend_model or models[0]
    card = next((c for c in cards if c.id == model), None)
    if card is None:
        report.problem(
            ChatbotError(f"{model!r} is not among the served models ({', '.join(models)}).", fix="Fix --backend-model.")
        )
        return finish(report)
    length = getattr(card, "max_model_len", None)
    context = f", context {length:,} tokens" if isinstance(length, int) else ", context length not reported"
    report.ok(f"models: {', '.join(models)}; using {model}{context}")
    if settings.backend_precision:
        report.info(f"precision {settings.backend_precision} (as stated with --backend-precision; not checked)")

    report.section("Chat")
    options = sampling_options(False, max_new_tokens=1)
    messages = [{"role": "user", "content": "Say hi."}]
    try:
        reply, seconds = stream_once(
            client, request_body(model, messages, options, thinking=False, send_max_tokens=True), False
        )
        reply.finish()
    except (openai.APIError, ChatbotError) as exc:
        report.problem(exc if isinstance(exc, ChatbotError) else backend_error(exc, url))
        return finish(report)
    report.ok(f"a one-token chat completed in {seconds * 1000:.0f} ms (finish {reply.finish_reason})")

    options = sampling_options(True, max_new_tokens=THINKING_PROBE_TOKENS)
    try:
        body = request_body(model, messages, options, thinking=True, send_max_tokens=True)
        reply, seconds = stream_once(client, body, True)
    except openai.APIError as exc:
        report.problem(backend_error(exc, url))
        return finish(report)
    if reply.reasoning:
        report.ok("thinking: arrives in reasoning_content (the server's reasoning parser splits it)")
    elif "<think>" in reply.content or "</think>" in reply.content:
        report.ok("thinking: arrives as <think>...</think> inside content (this app splits it)")
    else:
        report.info(
            f"thinking: none seen in the first {THINKING_PROBE_TOKENS} tokens with enable_thinking on; the server "
            "may ignore chat_template_kwargs, or the model may not think (vLLM/SGLang: --reasoning-parser qwen3)"
        )
    report.info(f"{THINKING_PROBE_TOKENS}-token thinking request: {seconds:.2f} s")
    return finish(report)


def finish(report: Report) -> int:
    print(report.text().lstrip("\n"))
    sys.stdout.flush()
    return 1 if report.problems else 0
