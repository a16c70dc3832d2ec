"""Whose chat is it: every Gradio session belongs to the browser that first used it.

Gradio keys a page's server-side state (its ``Conversation``), its running events and its heartbeat by a
*session hash* that the page itself makes up and sends in the clear with every request. Anyone who
learns it (a shared screen, a proxy log, a browser extension) could otherwise read that chat (export,
``/gradio_api/deep_link``), watch its replies (``/gradio_api/queue/data``), or stop them
(``/gradio_api/heartbeat/{hash}``, ``/gradio_api/cancel``, the Stop event).

``SessionOwnership`` is ASGI middleware on Gradio's app that closes this:

* the page (``GET /``) and the config (``GET /config``, what ``gradio_client`` reads first) set an
  HttpOnly cookie, ``qwen3-chat-browser-<port>``: a random token signed with a key kept beside the
  browser storage key (so a server restart keeps open pages working, and a cookie planted by another
  program on this host, which shares cookies across ports, is not ours);
* the first request that names a session hash binds it to that request's browser token; from then on
  a request naming that hash (in the path, the query or the JSON body) with another token, or none,
  gets 403 before Gradio sees it. Events that name only an event id (``/stream/{id}``,
  ``/call/{api}/{id}``) are traced to their session through Gradio's queue.

A session Gradio already holds but that has no owner here (its binding was pushed out by 100,000
newer sessions) is refused too: failing closed costs that tab a reload, never its chat. New sessions are
rate-limited per address and per browser, and one address holds at most its share of them
(``session_quota.py``), so one client cannot push the other tabs' chats out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qs

from .security import send_json_error
from .session_quota import SessionQuota

log = logging.getLogger(__name__)
COOKIE_PREFIX = "qwen3-chat-browser-"
SESSION_CAPACITY = 100_000  # ten times Gradio's own default state capacity
PAGE_PATHS = ("/", "/config", "/config/")
API_PREFIX = "/gradio_api/"
UNREAD = object()


def cookie_key(storage_secret: str) -> bytes:
    """The cookie signing key, derived from (not equal to) the browser storage key."""
    return hmac.new(storage_secret.encode(), b"qwen3-chat browser cookie", hashlib.sha256).digest()


class SessionOwnership:
    """ASGI middleware: session hashes answer only to the browser (cookie) that first used them."""

    def __init__(self, app, key: bytes, capacity: int = SESSION_CAPACITY, max_sessions: int = 1000) -> None:
        self.app, self.key, self.capacity = app, key, capacity
        self.owners: OrderedDict[str, str] = OrderedDict()  # session hash -> browser token
        self.quota = SessionQuota(max_sessions)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie_name = COOKIE_PREFIX + str((scope.get("server") or ("", 0))[1])
        browser = self.browser_of(scope, cookie_name)
        path = scope.get("path", "")
        if path in PAGE_PATHS and scope.get("method") in ("GET", "HEAD") and browser is None:
            await self.app(scope, receive, self.with_cookie(send, cookie_name, self.new_token()))
            return
        if not path.startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        body = UNREAD
        if scope.get("method") == "POST" and path != API_PREFIX + "upload":
            body = await read_body(receive)
            if body is None:  # the client left, or the body was over the size limit (answered outside)
                return
            receive = replay(body, receive)
        problem = self.refusal(scope, path, body, browser)
        if isinstance(problem, tuple):  # too many new sessions: a 429 with Retry-After
            message, seconds = problem
            log.warning("Refused a new session from %s: %s", client_address(scope), message)
            await send_json_error(send, 429, message, "too_many_sessions", [(b"retry-after", str(seconds).encode())])
            return
        if problem is not None:
            log.warning("Refused %s %s: %s", scope.get("method"), path, problem)
            await send_json_error(send, 403, problem, "session_owner")
            return
        await self.app(scope, receive, send)

    # --- the browser's token ------------------------------------------------------------------------------

    def new_token(self) -> str:
        token = secrets.token_urlsafe(24)
        return f"{token}.{self.sign(token)}"

    def sign(self, token: str) -> str:
        return hmac.new(self.key, token.encode(), hashlib.sha256).hexdigest()[:32]

    def browser_of(self, scope, cookie_name: str) -> str | None:
        """The request's browser token when its cookie is one we signed, else None."""
        for name, value in scope.get("headers", ()):
            if name.lower() != b"cookie":
                continue
            for part in value.decode("latin-1").split(";"):
                key, _, cookie = part.strip().partition("=")
                token, _, signature = cookie.strip('"').partition(".")
                if key == cookie_name and token and hmac.compare_digest(signature.encode(), self.sign(token).encode()):
                    return token
        return None

    @staticmethod
    def with_cookie(send, name: str, value: str):
        # HttpOnly: no script (ours, an extension's, an injected one) can read it. Lax, not Strict: a link
        # to the page from elsewhere must not mint a new cookie that orphans this browser's open tabs.
        header = f"{name}={value}; Path=/; HttpOnly; SameSite=Lax".encode("latin-1")

        async def send_with_cookie(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", header)]}
            await send(message)

        return send_with_cookie

    # --- the session a request names, and whether this browser owns it --------------------------------------

    def refusal(self, scope, path: str, body: Any, browser: str | None) -> str | tuple[str, int] | None:
        """Why this request may not touch the session it names (None: it may; a message and the seconds
        to wait: it would start one session too many)."""
        sessions = sessions_named(scope, path, body)
        if not isinstance(sessions, list):
            return "This page does not use that kind of request; send JSON."
        for session in sessions:
            problem = self.owner_problem(scope, session, browser)
            if problem is not None:
                return problem
        return None

    def owner_problem(self, scope, session: str, browser: str | None) -> str | tuple[str, int] | None:
        """Why ``browser`` may not use ``session`` (None: it owns it, or now does as its first user)."""
        if browser is None:
            return (
                "This request names a chat session but does not come from the browser that owns it (its "
                "cookie is missing or not from this server). Reload the page, and allow cookies for it."
            )
        owner = self.owners.get(session)
        if owner is None:
            if gradio_holds(scope, session):
                return "This page's session has expired on the server: reload the page."
            address = client_address(scope)
            too_many = self.quota.refusal(address, browser)
            if too_many is not None:
                return too_many
            for released in self.quota.started(address, browser, session):
                let_go(scope, released)  # its binding stays: that tab is told to reload, no one else gets it
            self.owners[session] = browser
            if len(self.owners) > self.capacity:
                self.owners.popitem(last=False)
            return None
        self.owners.move_to_end(session)
        for released in self.quota.used(client_address(scope), session):
            let_go(scope, released)
        if hmac.compare_digest(owner.encode(), browser.encode()):
            return None
        return f"Session {session[:4]}… belongs to another browser: only the page that started a chat can use it."


def sessions_named(scope, path: str, body: Any) -> list[str] | object:
    """Every session hash a Gradio API request names, in its path, query and JSON body (UNREAD when its
    body cannot be read). All of them, not the first found: a query naming the caller's own session must
    not vouch for a body naming someone else's."""
    rest = path[len(API_PREFIX) :].strip("/").split("/")
    method = scope.get("method")
    named = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash", [])  # queue/data...
    if method == "GET" and rest[0] == "heartbeat" and len(rest) == 2:
        named.append(rest[1])
    if method == "GET" and rest[0] == "stream" and len(rest) >= 3:  # stream/{session}/{run}/...
        named.append(rest[1])
    if method == "POST" and rest[0] == "stream" and len(rest) in (2, 3):  # stream/{event}[/close]
        named.append(session_of_event(scope, rest[1]))
    if method == "GET" and rest[0] == "call" and len(rest) >= 3:  # call[/v2]/{api}/{event}
        named.append(session_of_event(scope, rest[-1]))
    if body is not UNREAD and body:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            # Gradio's JSON routes refuse it anyway; the component server also takes forms, not used here.
            if rest[0] == "component_server":
                return UNREAD
            data = None
        session = data.get("session_hash") if isinstance(data, dict) else None
        named.append(session if isinstance(session, str) else "")
    return [session for session in named if session]


def gradio_queue(scope) -> Any:
    app = scope.get("app")
    blocks = app.get_blocks() if hasattr(app, "get_blocks") else None
    return getattr(blocks, "_queue", None)


def gradio_holds(scope, session: str) -> bool:
    """Whether Gradio already has state or events for ``session``."""
    holder = getattr(scope.get("app"), "state_holder", None)
    queue = gradio_queue(scope)
    pending = getattr(queue, "pending_event_ids_session", {})
    return (holder is not None and session in holder) or session in pending


def client_address(scope) -> str:
    return (scope.get("client") or ("unknown", 0))[0]


def let_go(scope, session: str) -> None:
    """Drop ``session``'s state from Gradio's holder (the address that made it holds too many); its tab is
    told to reload, its chat stays in its browser."""
    holder = getattr(scope.get("app"), "state_holder", None)
    if holder is None:
        return
    with holder.lock:
        holder.session_data.pop(session, None)  # as Gradio itself evicts beyond its capacity
        holder.time_last_used.pop(session, None)


def session_of_event(scope, event_id: str) -> str:
    queue = gradio_queue(scope)
    event = getattr(queue, "event_ids_to_events", {}).get(event_id)
    if event is not None:
        return event.session_hash or ""
    pending = getattr(queue, "pending_event_ids_session", {})
    return next((session for session, ids in pending.items() if event_id in ids), "")


async def read_body(receive) -> bytes | None:
    """The whole request body (bounded by BodySizeLimit outside), or None when the client went away."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """A ``receive`` that gives the app the body already read, then whatever the client sends next."""
    given = False

    async def receive_again():
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again
