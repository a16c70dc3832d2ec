"""The app started the way users start it (``python app.py ARGS``) on free local ports, and stopped.

``running_app(args, log_path)`` is the context manager every test and fixture uses: it waits until the
web chat answers and the model is ready, and stops the process on the way out, also when a test fails.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]

# Waits in tests are bounds that turn a hang into a failure, never measurements: generous enough for the
# slowest machine this runs on (one core of a 2-core AVX2 CPU).
WAIT_LIMIT_SECONDS = 120.0
CANCELLED_LINE = re.compile(r"request \d+ cancelled after (\d+) of at most (\d+) new tokens")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningApp:
    process: subprocess.Popen
    ui_url: str
    api_url: str | None
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss(self) -> int:
        """The server process's resident memory, in bytes."""
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss

    def health(self) -> dict:
        return httpx.get(self.api_url + "/health", timeout=30).json()

    def cancelled_generations(self) -> list[tuple[int, int]]:
        """(tokens generated, most asked for) of each generation the engine stopped on a cancel (from the log).

        The server logs at most 20 lines of one kind a minute (``log_limits.py``): a module that cancels more
        than that counts cancels with ``replies_counted``, not with this list's length."""
        return [(int(made), int(most)) for made, most in CANCELLED_LINE.findall(self.log())]

    def next_cancelled_generation(self, before: int) -> tuple[int, int]:
        """Wait for a cancel line after the first ``before`` (a count of ``cancelled_generations``); its
        (tokens generated, most asked for). Fails after WAIT_LIMIT_SECONDS with the log's tail."""
        deadline = time.monotonic() + WAIT_LIMIT_SECONDS
        while len(cancelled := self.cancelled_generations()) <= before:
            assert time.monotonic() < deadline, f"the engine never stopped the generation:\n{self.log()[-2000:]}"
            time.sleep(0.1)
        return cancelled[before]

    def replies_counted(self, key: str = "") -> dict[str, float]:
        """From the API's ``/metrics``: replies ended by outcome (stop, length, cancelled...) over every source,
        and "tokens": the tokens generated in all."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.get(self.api_url + "/metrics", headers=headers, timeout=30)
        response.raise_for_status()
        counted: dict[str, float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == "qwen3_replies_total":
                    outcome = sample.labels["outcome"]
                    counted[outcome] = counted.get(outcome, 0.0) + sample.value
                elif sample.name == "qwen3_generation_tokens_total":
                    counted["tokens"] = counted.get("tokens", 0.0) + sample.value
        return counted

    def wait_for_log(self, text: str, limit: float = WAIT_LIMIT_SECONDS) -> None:
        """Wait until the app has logged ``text`` (servers log asynchronously); fail after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while text not in self.log():
            assert time.monotonic() < deadline, f"the app never logged {text!r}:\n{self.log()[-3000:]}"
            time.sleep(0.05)

    def wait_until_idle(self, limit: float = WAIT_LIMIT_SECONDS) -> None:
        """Wait until nothing runs and nothing waits; fail after ``limit`` seconds (a bound, not a measurement)."""
        deadline = time.monotonic() + limit
        while (queue := self.health()["queue"])["depth"] or queue["busy"]:
            assert time.monotonic() < deadline, f"still busy after {limit:.0f} s: {queue}"
            time.sleep(0.05)


def start_app(
    args: list[str],
    log_path: Path,
    api: bool = True,
    timeout: float = 2 * WAIT_LIMIT_SECONDS,
    env: dict[str, str] | None = None,
    ports: tuple[int, int] | None = None,
    sigint_ignored: bool = False,
) -> RunningApp:
    """Start ``python app.py ARGS`` on free ports (or ``ports``: UI, API) and wait until the UI answers
    and the model is ready. The caller stops it (``stop_app``); prefer ``running_app``, which always does."""
    ui_port, api_port = ports or (free_port(), free_port() if api else 0)
    command = [sys.executable, str(ROOT / "app.py"), *args, "--port", str(ui_port), "--api-port", str(api_port)]
    log_file = log_path.open("w")
    # Chats kept on the server (with --auth) go beside the log, never into the user's own store.
    store = {"QWEN_CHAT_STORE_FILE": str(log_path.parent / "chats.sqlite3")}
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**store, **os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        # As a background job of a script starts it (`./start.sh &`): Python then installs no Ctrl+C handler.
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
    )
    app = RunningApp(process, f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{api_port}" if api else None, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app exited with {process.returncode}:\n{app.log()}")
        try:
            ui_ok = httpx.get(app.ui_url, timeout=2).status_code == 200
            api_ok = True
            if app.api_url:
                health = httpx.get(app.api_url + "/health", timeout=2)
                api_ok = health.status_code == 200 and health.json().get("status") == "ready"
            if ui_ok and api_ok:
                return app
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_app(app)
    raise RuntimeError(f"app did not become ready in {timeout} s:\n{app.log()}")


def terminate(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 15 s; returns when the process is gone."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_app(app: RunningApp) -> None:
    """Stop the app's process (the one running now: a test may have restarted it); nothing if it is gone."""
    terminate(app.process)


@contextmanager
def running_app(
    args: list[str],
    log_path: Path,
    api: bool = True,
    timeout: float = 2 * WAIT_LIMIT_SECONDS,
    env: dict[str, str] | None = None,
    ports: tuple[int, int] | None = None,
    sigint_ignored: bool = False,
) -> Iterator[RunningApp]:
    """``with running_app(["--model", path], tmp_path / "app.log") as app:`` the app, ready, stopped on exit.

    ``api=False`` starts the web chat only; ``env`` adds environment variables; ``ports`` (UI, API) fixes
    the ports (a test that restarts a server on the same ports); ``sigint_ignored`` starts it with SIGINT
    ignored, as a script's background job is. Raises ``RuntimeError`` with the app's
    log if it exits or is not ready within ``timeout`` seconds.
    """
    app = start_app(args, log_path, api=api, timeout=timeout, env=env, ports=ports, sigint_ignored=sigint_ignored)
    try:
        yield app
    finally:
        stop_app(app)
