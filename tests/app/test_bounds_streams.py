"""A streamed reply whose client stops reading is cut and its generation cancelled.

A client that keeps its connection open but never reads used to keep its reply generating to the end, every
piece held in memory until the socket closed. Now a stream that cannot hand its client the next piece for
``--stream-write-seconds`` is cut and cancelled, as on a disconnect. Probed over loopback with a raw socket
whose receive buffer is small and never read. Run: ``.venv/bin/python -m pytest tests/app/test_bounds_streams.py -q``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.app import RunningApp, start_app, stop_app

WRITE_SECONDS = 2
MOST = 8000  # tokens asked for; big pieces (20 log-probabilities each) fill the socket's buffers in a few hundred


@pytest.fixture(scope="module")
def app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    args = ["--model", str(scripted_fp8), "--stream-write-seconds", str(WRITE_SECONDS)]
    running = start_app(args, tmp_path_factory.mktemp("logs") / "streams.log")
    try:
        yield running
    finally:
        stop_app(running)


def test_a_stream_nobody_reads_is_cut_and_its_generation_cancelled(app: RunningApp) -> None:
    host, port = app.api_url.removeprefix("http://").split(":")
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
            "max_tokens": MOST,
            "min_tokens": MOST,
            "logprobs": True,
            "top_logprobs": 20,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # set before connecting: a small window
    try:
        reader.connect((host, int(port)))
        reader.sendall(head + body)
        app.wait_for_log("stream cut, generation stopped")  # nothing read: the server gave up writing
        app.wait_until_idle()  # the generation was cancelled and its slot freed, the connection still open
    finally:
        reader.close()
    made, most = app.cancelled_generations()[-1]
    assert most == MOST and made < MOST
