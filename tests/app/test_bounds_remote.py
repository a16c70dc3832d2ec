"""Behind ``--backend``, a web chat conversation longer than the server's context costs at most two requests.

The model server here is a stand-in (this test's own loopback HTTP server, no model): it counts the
requests it gets, refuses a conversation over its context in vLLM's words, and otherwise streams a
two-word reply. A 12,000-message chat used to be sent again once per dropped turn. Run:
``.venv/bin/python -m pytest tests/test_bounds_remote.py -q``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chatbot.chat.remote import RemoteBackend
from chatbot.chat.remote_trim import reported_sizes
from chatbot.chat.reply import ChatDone, stream_reply
from chatbot.errors import ContextLengthError

CONTEXT = 4096


class StandIn(BaseHTTPRequestHandler):
    """An OpenAI-compatible server with a 4,096-token context that counts 4 characters to a token."""

    requests = 0
    report_context = True  # whether /v1/models says max_model_len
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        card = {"id": "stand-in", "object": "model", "created": 0, "owned_by": "test"}
        if StandIn.report_context:
            card["max_model_len"] = CONTEXT
        self.reply(200, {"object": "list", "data": [card]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        StandIn.requests += 1
        prompt = sum(len(m.get("content") or "") // 4 + 4 for m in body["messages"])
        completion = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        if prompt + completion > CONTEXT:
            message = (
                f"This model's maximum context length is {CONTEXT} tokens. However, you requested "
                f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion). "
                "Please reduce the length of the messages or completion."
            )
            self.reply(400, {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}})
            return
        delta = {"role": "assistant", "content": "Fine, thanks."}
        chunk = {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "stand-in",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        last = chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        events = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(events)))
        self.end_headers()
        self.wfile.write(events)


@pytest.fixture
def stand_in() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    StandIn.requests, StandIn.report_context = 0, True
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def long_chat(messages: int, words: int = 3) -> list[dict[str, str]]:
    chat = [{"role": "system", "content": "Be brief."}]
    for number in range(messages // 2):
        chat += [
            {"role": "user", "content": f"question {number} " + "word " * words},
            {"role": "assistant", "content": f"answer {number} " + "word " * words},
        ]
    return [*chat, {"role": "user", "content": "How are you?"}]


@pytest.mark.parametrize("report_context", [True, False], ids=["context-known", "context-unknown"])
def test_a_twelve_thousand_message_chat_costs_at_most_two_requests(stand_in: str, report_context: bool) -> None:
    StandIn.report_context = report_context
    backend = RemoteBackend(stand_in)
    try:
        assert backend.load().reachable
        done = list(stream_reply(backend, long_chat(12_000), max_new_tokens=256))[-1]
    finally:
        backend.close()
    assert isinstance(done, ChatDone) and done.answer == "Fine, thanks."
    assert StandIn.requests <= 2, f"{StandIn.requests} requests for one reply"
    assert done.dropped_messages >= 11_000 and done.dropped_messages % 2 == 0  # whole turns, oldest first
    assert done.dropped_messages < 12_000  # the newest turns that fit are kept


def test_a_newest_message_too_long_for_the_server_is_refused_after_at_most_two_requests(stand_in: str) -> None:
    chat = [*long_chat(10), {"role": "assistant", "content": "ok"}, {"role": "user", "content": "word " * 20_000}]
    backend = RemoteBackend(stand_in)
    try:
        assert backend.load().reachable
        with pytest.raises(ContextLengthError):
            list(stream_reply(backend, chat, max_new_tokens=256))
    finally:
        backend.close()
    assert StandIn.requests <= 2


def test_the_refusal_says_the_context_and_the_prompt_tokens() -> None:
    vllm = (
        "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens (2000 in the "
        "messages, 100 in the completion). Please reduce the length of the messages or completion."
    )
    assert reported_sizes(vllm) == (2048, 2000)
    newer = "This model's maximum context length is 2048 tokens. However, your request has 2300 input tokens."
    assert reported_sizes(newer) == (2048, 2300)
    assert reported_sizes("the request exceeds the available context size, try increasing it") == (None, None)
