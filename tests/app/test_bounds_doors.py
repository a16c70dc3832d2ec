"""The doors hold under parallel and malformed calls: login and key throttling counts each attempt before the
next one is let through, a malformed web chat call is a short 400 with one bounded log line, and only the
app's own pages (its names on its two ports) count as its own origin.

Probes run over loopback against the app started with ``--auth`` and ``--api-key``; the guessing clients
connect from other loopback addresses (127.0.0.2, 127.0.0.3) so that their lock does not touch the others.
Run: ``.venv/bin/python -m pytest tests/test_bounds_doors.py -q``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.app import WAIT_LIMIT_SECONDS, RunningApp, start_app, stop_app

from chatbot.serve.security import HostOriginGuard, allowed_hosts

KEY = "right-key"
USER, PASSWORD = "user", "right-password"
HELLO = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
PARALLEL = 200
FREE_TRIES = 10  # FailedLoginThrottle's free failures per address
# After them the address is locked for 1 s, then 2, 4...: a burst that outlasts a lock gets one more try
# per lock that ran out, as sequential tries would.
CHECKED_AT_MOST = FREE_TRIES + 6


@pytest.fixture(scope="module")
def guarded_app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    env = {"QWEN_API_KEY": KEY, "QWEN_AUTH": f"{USER}:{PASSWORD}"}
    app = start_app(["--model", str(scripted_fp8)], tmp_path_factory.mktemp("logs") / "doors.log", env=env)
    try:
        yield app
    finally:
        stop_app(app)


async def parallel_statuses(source: str, send) -> Counter:
    """Statuses of PARALLEL requests sent at once from the loopback address ``source``."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    limits = httpx.Limits(max_connections=PARALLEL, max_keepalive_connections=0)
    async with httpx.AsyncClient(transport=transport, limits=limits, timeout=WAIT_LIMIT_SECONDS) as client:
        responses = await asyncio.gather(*(send(client, number) for number in range(PARALLEL)))
    return Counter(response.status_code for response in responses)


def test_parallel_wrong_keys_are_counted_before_the_next_is_checked(guarded_app: RunningApp) -> None:
    url = guarded_app.api_url + "/v1/chat/completions"

    async def guess(client: httpx.AsyncClient, number: int) -> httpx.Response:
        return await client.post(url, json=HELLO, headers={"Authorization": f"Bearer wrong-{number}"})

    statuses = asyncio.run(parallel_statuses("127.0.0.2", guess))
    assert set(statuses) <= {401, 429}, statuses
    assert statuses[401] <= CHECKED_AT_MOST, f"{statuses[401]} of {PARALLEL} parallel wrong keys were checked"
    right = httpx.post(url, json=HELLO, headers={"Authorization": f"Bearer {KEY}"}, timeout=WAIT_LIMIT_SECONDS)
    assert right.status_code == 200  # another address is not locked out


def test_parallel_wrong_passwords_are_counted_before_the_next_is_checked(guarded_app: RunningApp) -> None:
    async def guess(client: httpx.AsyncClient, number: int) -> httpx.Response:
        form = {"username": USER, "password": f"wrong-{number}"}
        return await client.post(guarded_app.ui_url + "/login", data=form)

    statuses = asyncio.run(parallel_statuses("127.0.0.3", guess))
    assert set(statuses) <= {400, 429}, statuses
    assert statuses[400] <= CHECKED_AT_MOST, f"{statuses[400]} of {PARALLEL} parallel wrong passwords were checked"


def logged_in(app: RunningApp) -> httpx.Client:
    client = httpx.Client(base_url=app.ui_url, timeout=WAIT_LIMIT_SECONDS)
    assert client.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200
    assert client.get("/config").status_code == 200  # the browser cookie the session owner check wants
    return client


def test_a_malformed_event_call_is_a_short_400_and_one_bounded_log_line(guarded_app: RunningApp) -> None:
    client = logged_in(guarded_app)
    before = len(guarded_app.log())
    for number in range(40):
        # undo takes three values; one is not enough, and a number is not a chat. One session: new ones are
        # rate-limited per browser (session_quota.py).
        response = client.post("/gradio_api/run/undo", json={"data": [number], "session_hash": "bad-calls"})
        assert response.status_code == 400, response.text[:300]
        assert len(response.content) < 600 and "Traceback" not in response.text
        assert "unpack" not in response.text and "handler" not in response.text  # no Python internals
    logged = guarded_app.log()[before:]
    assert "Traceback" not in logged
    assert len(logged) < 8_000, f"{len(logged)} bytes of log for 40 malformed calls"
    assert "A web chat event failed" in logged


def test_only_the_apps_own_pages_are_its_origin(guarded_app: RunningApp) -> None:
    url = guarded_app.api_url + "/v1/chat/completions"
    key = {"Authorization": f"Bearer {KEY}"}
    other_app = "http://localhost:9999"  # another web app or dev server on this machine
    foreign = httpx.post(url, json=HELLO, headers={**key, "Origin": other_app}, timeout=WAIT_LIMIT_SECONDS)
    assert foreign.status_code == 403 and "--cors-origins http://localhost:9999" in foreign.json()["error"]["message"]
    ui_port = guarded_app.ui_url.rsplit(":", 1)[1]
    for own in (guarded_app.ui_url, f"http://localhost:{ui_port}"):
        response = httpx.post(url, json=HELLO, headers={**key, "Origin": own}, timeout=WAIT_LIMIT_SECONDS)
        assert response.status_code == 200, (own, response.text[:300])
    client = logged_in(guarded_app)
    upload = client.post("/gradio_api/upload", files={"files": ("x.txt", b"planted")}, headers={"Origin": other_app})
    assert upload.status_code == 403


def test_the_guard_takes_only_our_ports_for_our_names_and_any_port_for_named_hosts() -> None:
    hosts = allowed_hosts("127.0.0.1", ["chat.home.arpa"])
    guard = HostOriginGuard(None, hosts, ["http://localhost:3000"], ports={7860, 8000}, named_hosts=["chat.home.arpa"])

    def own(origin: str) -> bool:
        return guard.refusal({"type": "http", "method": "POST"}, {"host": "127.0.0.1:8000", "origin": origin}) is None

    assert own("http://127.0.0.1:7860") and own("http://localhost:8000") and own("http://[::1]:7860")
    assert not own("http://localhost:9999") and not own("http://127.0.0.1") and not own("http://localhost:7860x")
    assert own("http://localhost:3000")  # --cors-origins
    assert own("https://chat.home.arpa")  # --allowed-hosts: behind a proxy on its own port
