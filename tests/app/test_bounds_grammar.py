"""Grammar compilation is bounded: counted before the work, compiled before admission in a worker process
with a time limit, cached, and never in the way of replies already running.

A JSON schema with a few thousand optional properties takes xgrammar minutes of CPU (cubic in their
count) even against the tiny test vocabulary; such a schema is refused with a 400 once the compiler's
bound has passed, while another client's reply keeps streaming and a request whose grammar is cached is
answered at once. Run: ``.venv/bin/python -m pytest tests/test_bounds_grammar.py -q``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from helpers.app import WAIT_LIMIT_SECONDS, RunningApp, start_app, stop_app

from chatbot.chat.request import ChatRequest
from chatbot.chat.tools import MAX_TOOLS, MAX_TOOLS_BYTES
from chatbot.engine import constraints
from chatbot.engine.constraints import Constraint
from chatbot.engine.grammar_compile import COMPILE_SECONDS, GrammarCompiler
from chatbot.errors import InvalidRequestError

# 2,400 optional properties: 61 KB of schema (under the size bound), minutes of compilation without a bound.
SLOW_SCHEMA = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2400)}}
SMALL_SCHEMA = {
    "type": "object",
    "properties": {"colour": {"enum": ["red", "green", "blue"]}},
    "required": ["colour"],
    "additionalProperties": False,
}
LONG_REPLY_TOKENS = 7000


def response_format(schema: dict, name: str = "probe") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def tool(name: str, parameters: dict | None = None, description: str = "") -> dict:
    function = {"name": name, "description": description, "parameters": parameters or {"type": "object"}}
    return {"type": "function", "function": function}


# --- counted before any work -----------------------------------------------------------------------------------


def test_too_many_or_too_large_tools_are_refused_before_any_work() -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(InvalidRequestError) as many:
        ChatRequest.build(messages, tools=[tool(f"f{i}") for i in range(MAX_TOOLS + 1)], tool_choice="required")
    assert many.value.param == "tools" and str(MAX_TOOLS) in many.value.message
    huge = [tool(f"f{i}", description="x" * (MAX_TOOLS_BYTES // 8)) for i in range(10)]
    with pytest.raises(InvalidRequestError) as large:
        ChatRequest.build(messages, tools=huge)
    assert large.value.param == "tools" and "KiB" in large.value.message
    with pytest.raises(InvalidRequestError) as schema:
        big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(4000)}}
        ChatRequest.build(messages, response_format=response_format(big))
    assert schema.value.param == "response_format.json_schema.schema"


# --- the compiler's bound, on the tiny tokenizer -----------------------------------------------------------------


@pytest.fixture
def quick_compiler(monkeypatch: pytest.MonkeyPatch) -> Iterator[GrammarCompiler]:
    compiler = GrammarCompiler(seconds=2.0)
    monkeypatch.setattr(constraints, "COMPILER", compiler)
    try:
        yield compiler
    finally:
        compiler.close()


@pytest.fixture(scope="module")
def vocab(scripted_fp8: Path) -> constraints.Vocabulary:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(scripted_fp8))
    config = json.loads((scripted_fp8 / "config.json").read_text())
    return constraints.Vocabulary(tokenizer, config["vocab_size"], (tokenizer.eos_token_id,))


def test_a_runaway_compilation_is_stopped_at_the_bound_and_its_refusal_remembered(quick_compiler, vocab) -> None:
    vocab.compile(Constraint("json_object"))  # starts the worker: its start is not compile time
    slow = Constraint("json_schema", json.dumps(SLOW_SCHEMA))
    started = time.monotonic()
    with pytest.raises(InvalidRequestError) as refused:
        vocab.compile(slow)
    assert time.monotonic() - started < WAIT_LIMIT_SECONDS
    assert (
        refused.value.param == "response_format" and "did not compile within 2 s of CPU time" in refused.value.message
    )
    assert "fewer optional properties" in (refused.value.fix or "")
    worker = quick_compiler._worker
    assert worker is None  # killed, not left burning a core
    with pytest.raises(InvalidRequestError):  # remembered: no second run of the same schema
        vocab.compile(slow)
    assert quick_compiler._worker is None
    assert vocab.compile(Constraint("json_schema", json.dumps(SMALL_SCHEMA))) is not None  # a fresh worker serves


def test_a_cancelled_compilation_stops_its_worker(quick_compiler, vocab) -> None:
    quick_compiler.seconds = WAIT_LIMIT_SECONDS
    vocab.compile(Constraint("json_object"))
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    slowish = dict(SLOW_SCHEMA, description="cancelled")
    assert vocab.compile(Constraint("json_schema", json.dumps(slowish)), cancel) is None
    assert quick_compiler._worker is None


# --- through the API, with another client's reply streaming -------------------------------------------------------


@pytest.fixture(scope="module")
def random_api(random_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    app = start_app(["--model", str(random_fp8), "--max-batch", "4"], tmp_path_factory.mktemp("logs") / "grammar.log")
    try:
        yield app
    finally:
        stop_app(app)


def chat(app: RunningApp, body: dict) -> httpx.Response:
    # Thinking off: a random model may never close its thinking, and the answer is what is constrained.
    no_thinking = {"chat_template_kwargs": {"enable_thinking": False}}
    question = [{"role": "user", "content": "Pick one."}]
    body = {"model": "m", "messages": question, "max_tokens": 200, **no_thinking, **body}
    return httpx.post(app.api_url + "/v1/chat/completions", json=body, timeout=WAIT_LIMIT_SECONDS)


def test_a_runaway_schema_is_refused_while_other_replies_stream(random_api: RunningApp) -> None:
    cached = chat(random_api, {"response_format": response_format(SMALL_SCHEMA)})
    assert cached.status_code == 200, cached.text  # compiled once: now cached (and the worker started)
    client = openai.OpenAI(base_url=random_api.api_url + "/v1", api_key="x", max_retries=0)
    long = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Talk for a long time."}],
        stream=True,
        max_tokens=LONG_REPLY_TOKENS,
        extra_body={"min_tokens": LONG_REPLY_TOKENS},
    )
    arrivals: list[float] = []

    def read_long() -> None:
        for _ in long:
            arrivals.append(time.monotonic())

    reader = threading.Thread(target=read_long, daemon=True)
    reader.start()
    while len(arrivals) < 5:
        assert reader.is_alive(), "the long reply ended before the probe"
        time.sleep(0.01)
    outcome: dict[str, object] = {}

    def send_slow() -> None:
        outcome["response"] = chat(random_api, {"response_format": response_format(SLOW_SCHEMA, "slow")})
        outcome["at"] = time.monotonic()

    sent = time.monotonic()
    slow = threading.Thread(target=send_slow)
    slow.start()
    time.sleep(1.0)  # the slow schema is compiling now
    again = chat(random_api, {"response_format": response_format(SMALL_SCHEMA)})
    answered = time.monotonic()
    assert again.status_code == 200, again.text
    json.loads(again.json()["choices"][0]["message"]["content"])
    slow.join(WAIT_LIMIT_SECONDS)
    assert not slow.is_alive(), "the slow schema was never answered"
    response = outcome["response"]
    assert isinstance(response, httpx.Response)
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert (
        error["param"] == "response_format"
        and f"did not compile within {COMPILE_SECONDS:g} s of CPU time" in error["message"]
    )
    # A request whose grammar is cached never waits for another's compilation.
    assert answered < outcome["at"]
    # The running reply kept streaming while the schema compiled.
    during = [t for t in arrivals if sent + 1.0 < t < outcome["at"]]  # type: ignore[operator]
    # A count over a window of at least COMPILE_SECONDS, not a rate: a paused reply sends none.
    assert len(during) >= 10, f"{len(during)} chunks while the schema compiled"
    long.close()
    reader.join(WAIT_LIMIT_SECONDS)
