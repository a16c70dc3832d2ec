"""SIGTERM drains: new requests are refused, running replies get the grace period, and a reply still running
after it ends with a message, on both servers; no stream is cut mid-chunk.

Before, SIGTERM ended the process at once: API streams ended with an unterminated chunked response and the
web chat's reply was cut without a word. Probed over loopback with ``--shutdown-grace-seconds 5`` and
replies far longer than that. Run: ``.venv/bin/python -m pytest tests/app/test_bounds_shutdown.py -q``.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
from helpers.app import WAIT_LIMIT_SECONDS, running_app

GRACE_SECONDS = 10  # long enough for the refused request on a loaded single core, short beside the reply
LONG = 6000


def test_sigterm_refuses_new_requests_and_ends_running_streams_with_a_message(scripted_fp8: Path, tmp_path) -> None:
    from gradio_client import Client

    args = ["--model", str(scripted_fp8), "--shutdown-grace-seconds", str(GRACE_SECONDS)]
    # Started with SIGINT ignored, as a background job of a script is (`./start.sh &`): the drain stops the
    # servers with a SIGINT, which then did nothing and the process never ended (the suite's in-suite failures).
    with running_app(args, tmp_path / "shutdown.log", sigint_ignored=True) as app:
        page = Client(app.ui_url, verbose=False)
        job = page.submit(
            message="Write forever", enable_thinking=False, max_new_tokens=LONG, min_new_tokens=LONG, api_name="/chat"
        )
        body = {"messages": [{"role": "user", "content": "Go"}], "stream": True, "max_tokens": LONG, "min_tokens": LONG}
        events: list[str] = []
        url = app.api_url + "/v1/chat/completions"
        with httpx.Client(timeout=WAIT_LIMIT_SECONDS) as client, client.stream("POST", url, json=body) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            while len(events) < 3:  # the reply is under way
                line = next(lines)
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
            app.process.send_signal(signal.SIGTERM)
            app.wait_for_log("SIGTERM: shutting down")
            refused = httpx.post(app.api_url + "/v1/chat/completions", json={**body, "stream": False}, timeout=30)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
            # Read to the end: a cut chunked response raises here (httpx.RemoteProtocolError).
            events += [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        assert last["error"]["code"] == "shutting_down", last
        _, box, notice, _ = job.result(timeout=WAIT_LIMIT_SECONDS)
        assert "shutting down" in notice and box == "Write forever"  # a message, and the question kept to resend
        started = time.monotonic()
        assert app.process.wait(timeout=WAIT_LIMIT_SECONDS) == 0
        assert time.monotonic() - started < WAIT_LIMIT_SECONDS
