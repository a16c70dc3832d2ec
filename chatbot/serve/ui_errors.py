"""What a failed web chat event tells the caller and the log: a short 400, one rate-limited log line.

Gradio answers an event called with values that do not fit it (too few, of the wrong kind: a script
calling ``/gradio_api/run/...`` by hand) with a 500 carrying the Python error, and prints the whole
traceback to stderr, past the log's rate limit (``log_limits.py``): 2 KB of log per request. Here the
page runs with ``show_error=False`` (no exception text reaches a browser), ``EventErrors`` turns those
500s into a 400 with a short message, and ``log_event_errors`` sends Gradio's tracebacks through the
logging system as one line each, where the rate limit applies.
"""

from __future__ import annotations

import json
import logging
import sys
import types

from .security import send_json_error

log = logging.getLogger(__name__)
MESSAGE_CHARS = 200
BAD_CALL = (
    "This call does not fit the web chat's event (the number or the kind of its values); the page sends "
    "them right, and gradio_client reads them from /config."
)


class EventErrors:
    """ASGI middleware for Gradio: a 500 from an event route, or an exception it raised, becomes a 400 with
    a short message (Gradio's own message for a value it refused, such as a number out of range; else a
    general one) and one log line."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/gradio_api/"):
            await self.app(scope, receive, send)
            return
        failed = started = False
        body = b""

        async def rewrite(message) -> None:
            nonlocal failed, started, body
            if message["type"] == "http.response.start" and message["status"] == 500:
                failed = True
                return
            started = True
            if not failed:
                await send(message)
                return
            if message["type"] == "http.response.body":
                body += message.get("body", b"")[: 64 * 1024]
                if not message.get("more_body", False):
                    await send_json_error(send, 400, short_message(body), "bad_event_call")

        try:
            await self.app(scope, receive, rewrite)
        except Exception:  # a Gradio route that raised (a made-up fn_index...): one line, not a traceback
            _log_current_exception()
            if not started:  # else the server ends the half-sent response
                await send_json_error(send, 400, BAD_CALL, "bad_event_call")


def short_message(body: bytes) -> str:
    """Gradio's message for a refused value when it gave one (a line, at most ``MESSAGE_CHARS``), else ours."""
    try:
        given = json.loads(body).get("error")
    except (ValueError, AttributeError):
        given = None
    if not isinstance(given, str) or not given.strip():
        return BAD_CALL
    line = given.strip().splitlines()[0]
    return line if len(line) <= MESSAGE_CHARS else line[:MESSAGE_CHARS] + "…"


def _log_current_exception(*_args, **_kwargs) -> None:
    error = sys.exc_info()[1]
    if error is None:
        return
    text = " ".join(str(error).split())
    text = text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "…"
    log.warning("A web chat event failed: %s: %s", type(error).__name__, text)


def log_event_errors() -> None:
    """Gradio's event routes, queue and route helpers print tracebacks with ``traceback.print_exc()``: give them
    a ``traceback`` whose ``print_exc`` logs one line instead (the stdlib module itself stays as it is)."""
    import traceback

    from gradio import queueing, route_utils, routes

    public = {name: getattr(traceback, name) for name in dir(traceback) if not name.startswith("__")}
    shim = types.SimpleNamespace(**public)
    shim.print_exc = _log_current_exception
    for module in (routes, queueing, route_utils):
        if getattr(module, "traceback", None) is traceback:
            module.traceback = shim  # type: ignore[attr-defined]
