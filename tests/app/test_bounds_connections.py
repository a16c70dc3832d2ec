"""Slow request bodies are cut and one address cannot take every connection, on both servers.

A thousand connections from one loopback address (127.0.0.2) send their headers and then their body a
byte a second: the API keeps answering a client on another address meanwhile, and the server closes the
slow ones once they fall behind the body rate (``slow_clients.py``). Run:
``.venv/bin/python -m pytest tests/test_bounds_connections.py -q``.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.app import WAIT_LIMIT_SECONDS, RunningApp, start_app, stop_app

from chatbot.serve.server import API_CONNECTION_LIMIT
from chatbot.serve.slow_clients import BODY_GRACE_SECONDS

HELLO = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    running = start_app(["--model", str(scripted_fp8)], tmp_path_factory.mktemp("logs") / "connections.log")
    try:
        yield running
    finally:
        stop_app(running)


def slow_bodies(url: str, path: str, count: int, source: str) -> list[socket.socket]:
    """``count`` connections from ``source`` that send a request's headers and the first byte of its body."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n{"
    ).encode()
    opened = []
    for _ in range(count):
        connection = socket.create_connection((host, int(port)), timeout=30, source_address=(source, 0))
        try:
            connection.sendall(head)
        except OSError:  # refused at once: the address holds too many
            connection.close()
            continue
        connection.setblocking(False)
        opened.append(connection)
    return opened


def wait_until_closed_by_the_server(connections: list[socket.socket]) -> float:
    """Dribble a byte a second into each connection until the server has closed all of them; the seconds
    that took (fails after WAIT_LIMIT_SECONDS)."""
    started = time.monotonic()
    selector = selectors.DefaultSelector()
    for connection in connections:
        selector.register(connection, selectors.EVENT_READ)
    remaining = set(connections)
    next_byte = started

    def closed(connection: socket.socket) -> None:
        remaining.discard(connection)
        selector.unregister(connection)
        connection.close()

    while remaining:
        assert time.monotonic() - started < WAIT_LIMIT_SECONDS, f"{len(remaining)} slow bodies still open"
        if time.monotonic() >= next_byte:
            next_byte += 1.0
            for connection in list(remaining):
                try:
                    connection.send(b" ")
                except OSError:
                    closed(connection)
        for key, _ in selector.select(timeout=0.2):
            connection = key.fileobj
            try:
                data = connection.recv(4096)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # closed by the server (an early answer, say a 403, does not end the body's hold)
                closed(connection)  # type: ignore[arg-type]
    selector.close()
    return time.monotonic() - started


def test_slow_bodies_are_cut_and_other_clients_are_served_meanwhile(app: RunningApp) -> None:
    assert app.api_url is not None
    slow = slow_bodies(app.api_url, "/v1/chat/completions", API_CONNECTION_LIMIT, "127.0.0.2")
    try:
        normal = httpx.post(app.api_url + "/v1/chat/completions", json=HELLO, timeout=WAIT_LIMIT_SECONDS)
        assert normal.status_code == 200, normal.text[:300]  # one address held no more than its share
        took = wait_until_closed_by_the_server(slow)
    finally:
        for connection in slow:
            connection.close()
    assert took >= BODY_GRACE_SECONDS / 2  # cut for being slow, not refused
    assert "request body came slower than" in app.log()


def test_slow_bodies_are_cut_on_the_web_chat_port_too(app: RunningApp) -> None:
    slow = slow_bodies(app.ui_url, "/gradio_api/queue/join", 50, "127.0.0.2")
    try:
        assert len(slow) == 50
        wait_until_closed_by_the_server(slow)
    finally:
        for connection in slow:
            connection.close()
    assert httpx.get(app.ui_url + "/", timeout=WAIT_LIMIT_SECONDS).status_code == 200
