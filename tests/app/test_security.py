"""What no web page and no stranger can do: reach the servers under a foreign Host name (DNS rebinding) or
change anything from a foreign Origin, on both ports; tried with httpx and with a rebinding simulation in
headless Chromium. Run: ``.venv/bin/python -m pytest tests/app/test_security.py -q``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.app import WAIT_LIMIT_SECONDS, RunningApp, running_app

from chatbot.serve.security import HostOriginGuard, allowed_hosts, host_name

HELLO = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def test_host_names_are_compared_without_port_or_brackets() -> None:
    assert host_name("Example.COM:8000") == "example.com"
    assert host_name("[::1]:7860") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1"
    hosts = allowed_hosts("127.0.0.1", [])
    assert {"localhost", "127.0.0.1", "::1"} <= hosts and "attacker.example" not in hosts
    assert "box.lan" in allowed_hosts("127.0.0.1", ["Box.lan"])
    assert allowed_hosts("127.0.0.1", ["*"]) is None


def test_the_guard_refuses_foreign_hosts_and_foreign_state_changing_origins() -> None:
    guard = HostOriginGuard(None, allowed_hosts("127.0.0.1", []), ["https://ui.example"])

    def refused(host: str, method: str = "POST", origin: str | None = None) -> bool:
        headers = {"host": host, **({"origin": origin} if origin else {})}
        return guard.refusal({"type": "http", "method": method}, headers) is not None

    assert refused("attacker.example:8000", "GET")
    assert not refused("127.0.0.1:8000")
    assert refused("127.0.0.1:8000", "POST", "http://attacker.example")
    assert refused("127.0.0.1:8000", "POST", "null")  # sandboxed frames and files
    assert not refused("127.0.0.1:8000", "GET", "http://attacker.example")  # reading: the browser's CORS decides
    assert not refused("127.0.0.1:8000", "POST", "http://localhost:7860")  # our own page
    assert not refused("127.0.0.1:8000", "POST", "https://ui.example")  # --cors-origins


def test_the_web_chat_loads_images_media_and_frames_from_itself_only(demo_app: RunningApp) -> None:
    """A model's answer or an imported chat cannot make the reader's browser fetch another address (the
    browser test shows the fetches refused; tests/browser/test_browser.py)."""
    policy = httpx.get(demo_app.ui_url + "/", timeout=30).headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["img-src"] == directives["media-src"] == "'self' data: blob:"
    assert directives["frame-src"] == "'self'" and directives["object-src"] == "'none'"
    assert "script-src" not in directives  # Gradio's own scripts are not this policy's business


@pytest.mark.parametrize("port", ["ui", "api"])
def test_a_foreign_host_gets_403_on_both_ports(demo_app: RunningApp, port: str) -> None:
    base = demo_app.ui_url if port == "ui" else demo_app.api_url
    for path in ("/", "/config", "/health", "/v1/models"):
        response = httpx.get(base + path, headers={"Host": "attacker.example:8083"}, timeout=30)
        assert response.status_code == 403, (path, response.status_code)
        assert "--allowed-hosts attacker.example" in response.json()["error"]["message"]
    assert httpx.get(base + "/", timeout=30).status_code in (200, 404)  # our own name still works


def test_a_foreign_origin_cannot_post_but_the_apps_own_page_can(demo_app: RunningApp) -> None:
    url = demo_app.api_url + "/v1/chat/completions"
    foreign = httpx.post(url, json=HELLO, headers={"Origin": "http://attacker.example"}, timeout=60)
    assert foreign.status_code == 403 and "--cors-origins" in foreign.json()["error"]["message"]
    own = httpx.post(url, json=HELLO, headers={"Origin": demo_app.ui_url}, timeout=60)
    assert own.status_code == 200
    upload = httpx.post(
        demo_app.ui_url + "/gradio_api/upload",
        files={"files": ("x.txt", b"planted")},
        headers={"Origin": "http://attacker.example"},
        timeout=30,
    )
    assert upload.status_code == 403  # no file written from another web site
    assert "Refused POST" in demo_app.log()


@pytest.fixture(scope="module")
def named_app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    args = ["--model", str(scripted_fp8), "--allowed-hosts", "chat.home.arpa", "--cors-origins", "https://ui.example"]
    with running_app(args, tmp_path_factory.mktemp("named") / "named.log") as app:
        yield app


def test_allowed_hosts_and_cors_origins_open_what_the_operator_names(named_app: RunningApp) -> None:
    named = {"Host": "chat.home.arpa"}
    assert httpx.get(named_app.api_url + "/health", headers=named, timeout=30).status_code == 200
    assert httpx.get(named_app.ui_url + "/", headers=named, timeout=30).status_code == 200
    assert httpx.get(named_app.api_url + "/health", headers={"Host": "other.arpa"}, timeout=30).status_code == 403
    preflight = httpx.options(
        named_app.api_url + "/v1/chat/completions",
        headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert preflight.headers.get("access-control-allow-origin") == "https://ui.example"
    reply = httpx.post(
        named_app.api_url + "/v1/chat/completions", json=HELLO, headers={"Origin": "https://ui.example"}, timeout=60
    )
    assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "https://ui.example"


@pytest.mark.browser
def test_dns_rebinding_in_a_real_browser_reads_nothing(demo_app: RunningApp) -> None:
    """attacker.example resolves to 127.0.0.1 (Chromium's host resolver rules): a script on that origin
    reaches our ports as same-origin requests, and gets nothing but 403s."""
    from helpers.browser import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    ui_port = demo_app.ui_url.rsplit(":", 1)[1]
    api_port = demo_app.api_url.rsplit(":", 1)[1]
    # Recent Chromium also blocks public pages from reaching loopback (Local Network Access); turned off
    # here, as other browsers and older versions do not have it, so that only the server protects.
    args = [
        *CHROMIUM_ARGS,
        "--host-resolver-rules=MAP attacker.example 127.0.0.1",
        "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessChecks",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page()
            response = page.goto(f"http://attacker.example:{ui_port}/")  # the page itself, straight from us
            assert response is not None and response.status == 403
            for port, paths in ((ui_port, ["/", "/config"]), (api_port, ["/health", "/v1/models"])):
                # The attacker's page, as it was served before the name was rebound to 127.0.0.1; its
                # script's requests to its own origin now reach our port.
                page.route(f"http://attacker.example:{port}/attack", lambda route: route.fulfill(body="<p>hi</p>"))
                page.goto(f"http://attacker.example:{port}/attack")
                statuses = page.evaluate(
                    """async (paths) => {
                        const out = [];
                        for (const path of paths) out.push((await fetch(path)).status);
                        const chat = await fetch("/v1/chat/completions", {method: "POST",
                            headers: {"Content-Type": "application/json"},
                            body: JSON.stringify({messages: [{role: "user", content: "hi"}]})});
                        out.push(chat.status);
                        return out;
                    }""",
                    paths,
                )
                assert statuses == [403] * (len(paths) + 1), (port, statuses)
        finally:
            browser.close()


@pytest.fixture
def upload_app(scripted_fp8: Path, tmp_path: Path) -> Iterator[tuple[RunningApp, Path]]:
    temp = tmp_path / "tmp"
    temp.mkdir()
    with running_app(
        ["--model", str(scripted_fp8), "--max-upload-mb", "1"],
        tmp_path / "upload.log",
        api=False,
        env={"TMPDIR": str(temp)},
    ) as app:
        yield app, temp


def test_uploads_go_to_a_private_folder_removed_at_exit_and_big_ones_are_refused(upload_app) -> None:
    app, temp = upload_app
    small = httpx.post(app.ui_url + "/gradio_api/upload", files={"files": ("chat.json", b"[]")}, timeout=30)
    assert small.status_code == 200, small.text
    [folder] = list(temp.glob("qwen3-chat-*"))
    assert folder.stat().st_mode & 0o777 == 0o700  # not the shared /tmp/gradio, and only ours
    assert Path(small.json()[0]).is_relative_to(folder)
    big = httpx.post(app.ui_url + "/gradio_api/upload", files={"files": ("big.json", b"x" * (2 * 2**20))}, timeout=60)
    assert big.status_code == 413
    assert app.process.poll() is None  # still serving
    # SIGTERM, then the app's own exit (atexit removes the folder): waited for, not cut by a kill after a
    # fixed time (a busy single core can take longer than stop_app's 15 s to close the servers).
    app.process.terminate()
    assert app.process.wait(timeout=WAIT_LIMIT_SECONDS) == 0, app.log()[-3000:]
    assert not folder.exists()  # removed on SIGTERM


@pytest.fixture(scope="module")
def locked_app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    folder = tmp_path_factory.mktemp("locked")
    args = ["--model", str(scripted_fp8), "--api-key", "sk-right", "--auth", "alice:right"]
    with running_app(args, folder / "locked.log") as app:
        yield app


def attempts_until_refused(send_wrong, limit: int = 20) -> tuple[int, httpx.Response]:
    for attempt in range(1, limit + 1):
        response = send_wrong()
        if response.status_code == 429:
            return attempt, response
    raise AssertionError(f"{limit} wrong attempts and never a 429")


@pytest.mark.parametrize("door", ["api key", "ui login"])
def test_guessing_is_slowed_down_and_logged_without_the_secret(locked_app: RunningApp, door: str) -> None:
    if door == "api key":

        def send(secret: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {secret}"}
            return httpx.get(locked_app.api_url + "/v1/models", headers=headers, timeout=30)

        what, right = "API keys", "sk-right"
    else:

        def send(secret: str) -> httpx.Response:
            return httpx.post(locked_app.ui_url + "/login", data={"username": "alice", "password": secret}, timeout=30)

        what, right = "logins", "right"
    attempt, refused = attempts_until_refused(lambda: send("guess-123"))
    assert attempt == 12  # ten free failures, the eleventh locks for a second, the twelfth is refused
    wait = int(refused.headers["Retry-After"])
    assert 1 <= wait <= 300 and "Too many failed" in refused.json()["error"]["message"]
    assert send(right).status_code == 429  # even the right secret waits: the address is locked
    time.sleep(wait + 0.5)
    assert send(right).status_code == 200  # and then it works, and the address is forgiven
    assert send("guess-123").status_code in (400, 401)
    log = locked_app.log()
    assert f"11 failed {what} from 127.0.0.1" in log and "guess-123" not in log


def test_with_a_login_gradios_own_routes_need_it_too(locked_app: RunningApp) -> None:
    for method, path in [
        ("GET", "/gradio_api/heartbeat/victim-session-hash"),
        ("POST", "/gradio_api/cancel"),
        ("POST", "/gradio_api/queue/join"),
        ("POST", "/gradio_api/upload"),
    ]:
        response = httpx.request(method, locked_app.ui_url + path, timeout=30)
        assert response.status_code == 401, (path, response.status_code)
    with httpx.Client(base_url=locked_app.ui_url, timeout=30) as browser:
        assert browser.post("/login", data={"username": "alice", "password": "right"}).status_code == 200
        assert browser.post("/gradio_api/upload", files={"files": ("a.json", b"[]")}).status_code == 200


def test_an_oversized_body_is_refused_before_it_is_read_and_memory_stays_put(demo_app: RunningApp) -> None:
    import psutil

    process = psutil.Process(demo_app.process.pid)
    before = process.memory_info().rss
    huge = '{"messages": [{"role": "user", "content": "' + "a" * (50 * 2**20) + '"}]}'
    response = httpx.post(
        demo_app.api_url + "/v1/chat/completions",
        content=huge,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413 and "--max-request-mb" in response.json()["error"]["message"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"a" * 2**20

    chunked = httpx.post(demo_app.ui_url + "/gradio_api/queue/join", content=chunks(), timeout=60)
    assert chunked.status_code == 413
    assert process.memory_info().rss - before < 100 * 2**20
    assert httpx.post(demo_app.api_url + "/v1/chat/completions", json=HELLO, timeout=60).status_code == 200


def test_a_flood_of_one_log_message_is_cut_short_and_counted(monkeypatch) -> None:
    import logging

    from chatbot.serve import log_limits

    clock = [1000.0]
    monkeypatch.setattr(log_limits.time, "monotonic", lambda: clock[0])
    guard = log_limits.RateLimitFilter(burst=3, period=60)
    records = [logging.LogRecord("uvicorn.error", logging.WARNING, "", 0, "Invalid HTTP request received.", (), None)]
    passed = [guard.filter(logging.makeLogRecord(records[0].__dict__)) for _ in range(1000)]
    assert sum(passed) == 3  # 997 dropped, not written
    other = logging.LogRecord("app", logging.INFO, "", 0, "another message", (), None)
    assert guard.filter(other)  # other messages are not affected
    clock[0] += 61
    summary = logging.makeLogRecord(records[0].__dict__)
    assert guard.filter(summary) and "[997 similar messages dropped]" in summary.getMessage()


@pytest.mark.parametrize("port", ["api", "ui"])
def test_connections_that_never_finish_their_request_are_closed_and_others_still_served(
    demo_app: RunningApp, port: str
) -> None:
    import socket

    base, path = (demo_app.api_url, "/health") if port == "api" else (demo_app.ui_url, "/config")
    host, number = "127.0.0.1", int(base.rsplit(":", 1)[1])
    idle = [socket.create_connection((host, number), timeout=5) for _ in range(200)]
    partial = [socket.create_connection((host, number), timeout=5) for _ in range(50)]
    try:
        for sock in partial:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode())  # headers never finished
        assert httpx.get(base + path, timeout=30).status_code == 200  # others are served
        for sock in idle + partial:  # each is closed by the server (recv gives b"") within the bound
            sock.settimeout(WAIT_LIMIT_SECONDS)
            assert sock.recv(1024) == b""
    finally:
        for sock in idle + partial:
            sock.close()
    assert httpx.get(base + path, timeout=30).status_code == 200


def test_another_client_with_the_victims_session_hash_can_neither_read_nor_stop(demo_app: RunningApp) -> None:
    """The session hash travels in the clear; knowing it is no longer enough: the session belongs to the
    browser (its HttpOnly cookie) that first used it."""
    from gradio_client import Client

    victim = Client(demo_app.ui_url, verbose=False)
    victim.predict(message="my bank PIN is tulip-4242", enable_thinking=False, api_name="/chat")
    long_reply = victim.submit(
        message="and a long story", enable_thinking=False, max_new_tokens=256, min_new_tokens=256, api_name="/chat"
    )
    hash_ = victim.session_hash

    thief = Client(demo_app.ui_url, verbose=False)  # a real client with its own cookie, and the victim's hash
    thief.session_hash = hash_
    for endpoint in ("/export_conversation", "/stop"):
        with pytest.raises(httpx.HTTPStatusError, match="403 Forbidden"):
            thief.submit(api_name=endpoint).result(timeout=WAIT_LIMIT_SECONDS)
    cookie = dict(thief.cookies)
    config = httpx.get(demo_app.ui_url + "/config", timeout=30).json()
    export_fn = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "export_conversation")
    for jar in (cookie, {}):  # with a cookie of its own, and with none
        attempts = [
            ("GET", f"/gradio_api/heartbeat/{hash_}", None),  # closing it would stop the reply (unload)
            ("GET", f"/gradio_api/queue/data?session_hash={hash_}", None),  # the reply as it streams
            ("GET", f"/gradio_api/deep_link?session_hash={hash_}", None),  # a dump of the page's state
            ("POST", "/gradio_api/cancel", {"session_hash": hash_, "fn_index": export_fn, "event_id": "x"}),
            ("POST", "/gradio_api/queue/join", {"session_hash": hash_, "fn_index": export_fn, "data": []}),
            ("POST", "/gradio_api/run/stop", {"session_hash": hash_, "data": []}),
            # its own (fresh) session in the query does not vouch for the victim's in the body
            ("POST", "/gradio_api/queue/join?session_hash=thiefs-own", {"session_hash": hash_, "fn_index": export_fn}),
        ]
        for method, path, body in attempts:
            # Streamed: a heartbeat or a queue stream that is let through would never end.
            with httpx.stream(method, demo_app.ui_url + path, json=body, cookies=jar, timeout=30) as response:
                assert response.status_code == 403, (path, bool(jar), response.status_code)
                assert "browser" in json.loads(response.read())["error"]["message"]
    # The secret is a word, not digits: the log is full of random hex ids.
    assert "tulip" not in demo_app.log()  # refusals do not log what they protect

    _, _, _, record = long_reply.result(timeout=WAIT_LIMIT_SECONDS)
    assert json.loads(record)["messages"][-1]["stats"]["finish_reason"] == "length"  # not stopped by the thief
    exported = Path(victim.predict(api_name="/export_conversation")).read_text(encoding="utf-8")
    assert "my bank PIN is tulip-4242" in exported  # the owner still reads it
    assert "belongs to another browser" in demo_app.log()


@pytest.fixture(scope="module")
def capped_app(random_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    # A time limit no reply can meet on any machine: every reply is cut by it after a token or a few.
    args = ["--model", str(random_fp8), "--max-new-tokens-cap", "64", "--max-generation-seconds", "0.001"]
    args += ["--max-sessions", "2"]
    with running_app(args, tmp_path_factory.mktemp("capped") / "capped.log") as app:
        yield app


def test_the_server_caps_tokens_and_time_per_reply_for_the_api_and_the_web_chat(capped_app: RunningApp) -> None:
    import openai
    from gradio_client import Client
    from helpers.clients import openai_client

    client = openai_client(capped_app)
    hello = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="m", messages=hello, max_tokens=65)
    assert refused.value.body["param"] == "max_tokens" and "--max-new-tokens-cap" in refused.value.body["message"]
    # Within the cap, and with no max_tokens at all (the room left, cut to the cap): served, and cut by the clock.
    for asked in ({"max_tokens": 64, "extra_body": {"min_tokens": 64}}, {"extra_body": {"min_tokens": 64}}):
        reply = client.chat.completions.create(model="m", messages=hello, **asked)
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens < 64, asked
    capped_app.wait_for_log("stopped at the time limit")
    assert "(--max-generation-seconds)" in capped_app.log()

    page = Client(capped_app.ui_url, verbose=False)  # the web chat asks for more than the cap: it is cut to it
    _, _, notice, record = page.predict(
        message="Hi", enable_thinking=False, max_new_tokens=4000, min_new_tokens=4000, api_name="/chat"
    )
    stats = json.loads(record)["messages"][-1]["stats"]
    assert notice == "" and stats["finish_reason"] == "length" and stats["time_limited"] and stats["new_tokens"] < 64
    assert capped_app.process.poll() is None


def test_an_import_larger_than_a_chat_may_be_is_refused_with_a_message(demo_app: RunningApp, tmp_path: Path) -> None:
    import psutil
    from gradio_client import Client, handle_file

    page = Client(demo_app.ui_url, verbose=False)
    big = {"format": "qwen3-chat-conversation", "title": "huge", "messages": []}
    big["messages"] = [{"role": "user", "content": "x" * 2**20}, {"role": "assistant", "content": "y" * 2**20}] * 2
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(big), encoding="utf-8")  # 4 MB: under the upload limit, over the chat limit (2 MB)
    process = psutil.Process(demo_app.process.pid)
    before = process.memory_info().rss
    chat, notice, *_ = page.predict(handle_file(str(path)), api_name="/import_conversation")
    assert "--max-chat-mb" in notice and "4.0 MB" in notice and chat == {"__type__": "update"}
    assert process.memory_info().rss - before < 100 * 2**20
    big["messages"] = [{"role": "user", "content": "small"}, {"role": "assistant", "content": "fine"}]
    path.write_text(json.dumps(big), encoding="utf-8")
    chat, notice, *_ = page.predict(handle_file(str(path)), api_name="/import_conversation")
    assert notice == "" and len(chat) == 2  # a chat within the limit is imported as before


def test_a_cookie_is_ours_only_when_signed_with_our_key() -> None:
    from chatbot.serve.session_owner import SessionOwnership, cookie_key

    owner = SessionOwnership(None, cookie_key("one secret"))
    token = owner.new_token()

    def browser(value: str, key: str = "qwen3-chat-browser-7860") -> str | None:
        return owner.browser_of({"headers": [(b"cookie", f"a=1; {key}={value}".encode("latin-1"))]}, key)

    assert browser(token) == token.split(".")[0]
    assert browser(SessionOwnership(None, cookie_key("another")).new_token()) is None  # planted by another server
    assert browser(token.split(".")[0] + ".0000") is None and browser("é.é") is None and browser("") is None


def test_a_tab_whose_session_was_let_go_is_told_to_reload_and_its_chat_is_not_overwritten(
    capped_app: RunningApp,
) -> None:
    from gradio_client import Client

    tab = Client(capped_app.ui_url, verbose=False)
    _, chat_id, _, _ = tab.predict(system_prompt="", api_name="/new_chat")  # as the page does when it opens
    _, _, notice, record = tab.predict(message="Keep me", chat_id=chat_id, api_name="/chat")
    assert notice == "" and json.loads(record)["id"] == chat_id
    for _ in range(3):  # newer tabs: the server holds two (--max-sessions 2), so this one is let go
        Client(capped_app.ui_url, verbose=False).predict(api_name="/model_status")
    _, box, notice, record = tab.predict(message="Then this", chat_id=chat_id, api_name="/chat")
    assert "reload the page" in notice and box == "Then this"
    assert record == {"__type__": "update"}  # nothing is written over the chat the browser keeps
