"""What the web chat lets out without ``--auth``: no usage statistics, no monitoring key in the log, no
Python tracebacks past the log's rate limit, and a storage key (which also seeds the cookie key) that only
this user can read.

Probed over loopback on the app started with a cache folder of its own, holding a storage key left
readable by everyone (0644) as earlier versions wrote it. Run:
``.venv/bin/python -m pytest tests/app/test_bounds_leaks.py -q``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.app import RunningApp, start_app, stop_app

BAD_CALLS = 40
LOG_BYTES_PER_BAD_CALL = 200  # one rate-limited line at most; a traceback is 2 KB


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    secret = folder / "qwen3-chat" / "ui-storage-secret"
    secret.parent.mkdir()
    secret.write_text("an-older-key", encoding="utf-8")
    secret.chmod(0o644)
    return folder


@pytest.fixture(scope="module")
def app(scripted_fp8: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    kernels = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qwen3-chat" / "kernels"
    env = {"XDG_CACHE_HOME": str(cache), "QWEN_KERNEL_CACHE": os.environ.get("QWEN_KERNEL_CACHE", str(kernels))}
    log_path = tmp_path_factory.mktemp("logs") / "leaks.log"
    running = start_app(["--model", str(scripted_fp8)], log_path, api=False, env=env)
    try:
        yield running
    finally:
        stop_app(running)


def test_monitoring_is_closed_and_its_key_never_logged(app: RunningApp) -> None:
    for path in ("/monitoring", "/monitoring/summary", "/monitoring/guess"):
        answer = httpx.get(app.ui_url + path, timeout=30)
        assert answer.status_code in (403, 404), (path, answer.text[:200])
        assert "total_requests" not in answer.text and "event_analytics" not in answer.text
    assert "/monitoring/" not in app.log()


def test_bad_calls_log_no_tracebacks(app: RunningApp) -> None:
    before = len(app.log().encode())
    with httpx.Client(base_url=app.ui_url, timeout=30) as client:
        client.get("/config")  # the browser cookie
        session = "one-session"  # one: new sessions are rate-limited
        form = {"content-type": "multipart/form-data"}
        for _ in range(BAD_CALLS):
            client.post("/gradio_api/run/chat", json={"data": [1, 2], "session_hash": session})
            client.post("/gradio_api/queue/join", json={"data": [], "fn_index": 10_000, "session_hash": session})
            # refused before its body is read: the server may close the connection under it
            with contextlib.suppress(httpx.TransportError):
                httpx.post(app.ui_url + "/gradio_api/upload", content=b"--x\r\nnot a form", headers=form, timeout=30)
    logged = app.log().encode()[before:]
    assert b"Traceback" not in logged, logged[:3000].decode(errors="replace")
    assert len(logged) < 3 * BAD_CALLS * LOG_BYTES_PER_BAD_CALL, logged[-3000:].decode(errors="replace")


def test_the_storage_key_is_readable_by_this_user_only(app: RunningApp, cache: Path) -> None:
    secret = cache / "qwen3-chat" / "ui-storage-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600  # an older 0644 one was made private at start
    assert secret.read_text(encoding="utf-8") == "an-older-key"  # and kept: saved chats stay readable
    assert "readable by this user only" in app.log()


def test_a_new_storage_key_is_written_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chatbot.serve.ui_session import storage_secret

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    current = os.umask(0o022)  # the usual umask: a plain write would be readable by everyone (0644)
    try:
        key = storage_secret()
    finally:
        os.umask(current)
    path = tmp_path / "qwen3-chat" / "ui-storage-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text(encoding="utf-8") == key
