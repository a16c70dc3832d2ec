"""Who may talk to the servers: a trusted-host allowlist and an Origin check, on both ports.

A web page the user happens to open can make the browser send requests to 127.0.0.1 in two ways:

* **DNS rebinding**: the page's own name (attacker.example) is made to resolve to 127.0.0.1, so the
  browser treats our server as same-origin with the page. The request then carries
  ``Host: attacker.example``: refusing every Host that is not one of ours (403) closes this, as
  Ollama and the llama.cpp server do.
* **Cross-site requests**: a form or script on another origin POSTs to us. Browsers send that origin in
  the ``Origin`` header; a state-changing request (anything but GET/HEAD/OPTIONS, and every WebSocket)
  from an origin that is neither ours nor in ``--cors-origins`` is refused (403). Ours means one of our
  names on one of our two ports: another web app or dev server on this machine (``localhost:9999``) is
  not ours, as Ollama accepts only ``OLLAMA_ORIGINS`` beyond its own.

``HostOriginGuard`` is plain ASGI middleware, installed on the API's FastAPI app and on Gradio's.
``FailedLoginThrottle`` slows password and key guessing: after a few failures from one address, that
address gets 429 with Retry-After for a time that doubles with each further failure.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
LOOPBACK = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
ANY = "*"


def split_list(value: str | None) -> list[str]:
    """ "a, b,c" -> ["a", "b", "c"] (the format of --allowed-hosts and --cors-origins)."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def local_names() -> set[str]:
    """This machine's host names and interface addresses (what LAN users type when we listen on 0.0.0.0)."""
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    names |= {f"{name}.local" for name in list(names) if "." not in name}
    try:
        import psutil

        for addresses in psutil.net_if_addrs().values():
            names |= {
                a.address.split("%")[0].lower() for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6)
            }
    except (ImportError, OSError) as exc:  # without them only the names above and the loopback ones are allowed
        log.warning("Could not list this machine's addresses (%s); add them with --allowed-hosts", exc)
    return names


def default_allowed_hosts(bound_host: str) -> set[str]:
    """Loopback names, the address we listen on, and every local address when we listen on all of them."""
    hosts = set(LOOPBACK)
    if bound_host in ("0.0.0.0", "::", ""):
        hosts |= local_names()
    else:
        hosts.add(bound_host.lower())
    return hosts


def allowed_hosts(bound_host: str, extra: Iterable[str]) -> set[str] | None:
    """The hosts to accept: None means any (``--allowed-hosts '*'``)."""
    extra = [host.lower().strip("[]") for host in extra]
    if ANY in extra:
        return None
    return default_allowed_hosts(bound_host) | set(extra)


def host_name(value: str) -> str:
    """'Example.com:8000' -> 'example.com'; '[::1]:7860' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


async def send_json_error(send, status: int, message: str, code: str, headers: Iterable[tuple[bytes, bytes]] = ()):
    """An OpenAI-style error body, for middleware that answers before the app does."""
    kinds = {400: "invalid_request_error", 401: "authentication_error", 403: "forbidden", 413: "invalid_request_error"}
    kind = kinds.get(status, "rate_limit_error")
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    start_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start_headers})
    await send({"type": "http.response.body", "body": body})


class HostOriginGuard:
    """ASGI middleware: 403 for a foreign Host, and for a state-changing request from a foreign Origin."""

    def __init__(
        self,
        app,
        hosts: set[str] | None,
        cors_origins: Iterable[str] = (),
        flag_hint: str = "",
        ports: Iterable[int] | None = None,
        named_hosts: Iterable[str] = (),
    ) -> None:
        """``ports``: the app's own ports (the web chat's and the API's); an origin on one of ``hosts`` is
        ours only on one of them (None: on any). ``named_hosts`` (``--allowed-hosts``) are served behind a
        proxy that picks the port: any port of theirs is ours."""
        self.app = app
        self.hosts = hosts
        self.cors_origins = {origin.rstrip("/").lower() for origin in cors_origins}
        self.flag_hint = flag_hint
        self.ports = set(ports) if ports is not None else None
        self.named_hosts = {host.lower().strip("[]") for host in named_hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        problem = self.refusal(scope, headers)
        if problem is None:
            await self.app(scope, receive, send)
            return
        log.warning("Refused %s %s: %s", scope.get("method", "WEBSOCKET"), scope.get("path", ""), problem)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_json_error(send, 403, problem, "forbidden")

    def refusal(self, scope, headers: dict[str, str]) -> str | None:
        host = host_name(headers.get("host", ""))
        if self.hosts is not None and host not in self.hosts:
            return (
                f"Host {host!r} is not one of this server's names; requests through other names (DNS "
                f"rebinding) are refused. To serve it under that name, start with --allowed-hosts {host}"
                f"{self.flag_hint}."
            )
        origin = headers.get("origin")
        state_changing = scope["type"] == "websocket" or scope.get("method", "GET") not in SAFE_METHODS
        if origin is None or not state_changing or origin.rstrip("/").lower() in self.cors_origins:
            return None
        if self.hosts is None or self.own_origin(origin):
            return None
        return (
            f"Requests from the web page at {origin} are refused: it is not this app's own page. To let a "
            f"browser front end on that origin use this server, start with --cors-origins {origin}."
        )

    def own_origin(self, origin: str) -> bool:
        """Whether ``origin`` is one of this app's pages: one of our names on one of our ports (another web app
        on this machine, say http://localhost:9999, is not)."""
        if "://" not in origin:
            return False
        parts = urlsplit(origin.lower())
        host = host_name(parts.netloc)
        if host in self.named_hosts:
            return True
        if self.hosts is None or host not in self.hosts:
            return False
        try:
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        except ValueError:  # not a port number
            return False
        return self.ports is None or port in self.ports


class FailedLoginThrottle:
    """ASGI middleware: after ``free`` failed attempts from one address, its attempts get 429 for 1, 2, 4... s
    (at most ``most``); requests that are not attempts (``attempt(scope)`` false) pass as usual.

    An attempt is counted before the next one from the same address is let through, so parallel guesses
    get no more tries than sequential ones: ``verdict(scope)``, when given, says at once whether an attempt
    fails (an API key is compared before the app runs); without it every attempt counts as failed while
    it runs and is settled by ``outcome(scope, status)``: "failed", "succeeded" (which forgives the
    address) or None (not an attempt after all). Addresses are forgotten ``window`` seconds after their
    last failure, and at most ``capacity`` are remembered, so memory stays bounded under a flood.
    """

    def __init__(
        self,
        app,
        outcome: Callable[[dict, int], str | None],
        attempt: Callable[[dict], bool],
        what: str,
        verdict: Callable[[dict], str | None] | None = None,
        free: int = 10,
        most: float = 300.0,
        window: float = 600.0,
        capacity: int = 10_000,
    ) -> None:
        self.app, self.outcome, self.attempt, self.what, self.verdict = app, outcome, attempt, what, verdict
        self.free, self.most, self.window, self.capacity = free, most, window, capacity
        self.clients: OrderedDict[str, tuple[int, float, float]] = OrderedDict()  # failures, locked until, last

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.attempt(scope):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        now = time.monotonic()
        failures, locked_until, last = self.clients.get(client, (0, 0.0, 0.0))
        if now - last > self.window:
            failures, locked_until = 0, 0.0
        if locked_until > now:
            wait = math.ceil(locked_until - now)
            message = f"Too many failed {self.what} from this address: try again in {wait} s."
            await send_json_error(
                send, 429, message, "too_many_failed_attempts", [(b"retry-after", str(wait).encode())]
            )
            return
        # Counted before anything awaits: the next attempt from this address already sees this one.
        known = self.verdict(scope) if self.verdict is not None else "pending"
        if known == "succeeded":
            self.clients.pop(client, None)
        elif known is not None:
            self.record_failure(client, failures + 1, now)
        if known != "pending":
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            result = self.outcome(scope, status)
            if result == "succeeded":
                self.clients.pop(client, None)
            elif result != "failed" and client in self.clients:  # not a failure after all: uncount it
                counted, until, at = self.clients[client]
                self.clients[client] = (max(0, counted - 1), until, at)

    def record_failure(self, client: str, failures: int, now: float) -> None:
        locked_until = 0.0
        if failures > self.free:
            seconds = min(self.most, 2.0 ** (failures - self.free - 1))
            locked_until = now + seconds
            log.warning("%d failed %s from %s: refusing it for %.0f s", failures, self.what, client, seconds)
        self.clients[client] = (failures, locked_until, now)
        self.clients.move_to_end(client)
        while len(self.clients) > self.capacity:
            self.clients.popitem(last=False)


class BodySizeLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before the app reads (or parses) it.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    arrives and cut off at the limit (the app then sees a client that went away), so no request can
    make the server hold more than ``limit`` bytes.
    """

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope.get("headers", ()) if name.lower() == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self.refuse(send)
            return
        received = 0
        started = too_large = False

        async def counting_receive():
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # the app sees a client that went away, and stops reading
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def watching_send(message) -> None:
            nonlocal started
            if too_large and not started:
                return  # whatever the app answers to a vanished client, ours is the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self.refuse(send)

    async def refuse(self, send) -> None:
        mib = self.limit / 2**20
        message = (
            f"The request body is larger than this server accepts ({mib:.0f} MiB). Send less text, or start "
            "the server with a larger --max-request-mb."
        )
        await send_json_error(send, 413, message, "request_too_large")


def carries_a_key(scope: dict) -> bool:
    return any(name.lower() in (b"authorization", b"x-api-key") for name, _ in scope.get("headers", ()))


def api_key_verdict(key: str) -> Callable[[dict], str | None]:
    """Whether a request's bearer key is ``key`` ("succeeded") or not ("failed"), compared in constant time."""
    expected = key.encode()

    def verdict(scope: dict) -> str | None:
        headers = {name.lower(): value for name, value in scope.get("headers", ())}
        scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():  # Anthropic's clients send x-api-key instead
            scheme, given = "bearer", headers.get(b"x-api-key", b"").decode("latin-1")
        matches = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)
        return "succeeded" if matches else "failed"

    return verdict


def api_key_outcome(scope: dict, status: int) -> str | None:
    """A wrong key fails; a request served with the right one forgives the address."""
    if status == 401:
        return "failed"
    return "succeeded" if status < 400 else None


def is_login(scope: dict) -> bool:
    return scope.get("path", "").rstrip("/") == "/login" and scope.get("method") == "POST"


def ui_login_outcome(scope: dict, status: int) -> str | None:
    return "succeeded" if status == 200 else "failed" if status == 400 else None


class LoginRequired:
    """ASGI middleware for Gradio with ``--auth``: its API routes (``/gradio_api/...``: queue, heartbeat,
    cancel, upload, files) answer only to a browser that has logged in; Gradio itself checks the login on
    some of them only. The login is Gradio's own session cookie, checked against its session tokens.
    """

    OPEN = ("/gradio_api/startup-events",)  # Gradio calls it on itself once at launch

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and path.startswith("/gradio_api/")
            and path not in self.OPEN
            and not self.logged_in(scope)
        ):
            await send_json_error(send, 401, "Log in first (the page asks for the --auth user and password).", "login")
            return
        await self.app(scope, receive, send)

    @staticmethod
    def logged_in(scope) -> bool:
        tokens = getattr(scope.get("app"), "tokens", None) or {}
        for name, value in scope.get("headers", ()):
            if name.lower() != b"cookie":
                continue
            for part in value.decode("latin-1").split(";"):
                key, _, token = part.strip().partition("=")
                if key.startswith("access-token") and token in tokens:
                    return True
        return False


class PagePolicy:
    """ASGI middleware: the web chat's pages load images, sound, video, frames and form posts from this
    server only (a Content-Security-Policy header; scripts and styles are left to Gradio).

    A chat shows text that neither the user nor this server wrote: the model's answers (which can repeat
    what a document or a tool result told it to) and imported files. Markdown images and the HTML the
    sanitizer keeps (``<img>``, ``<video>``, ``<form>``) would otherwise make the reader's browser fetch
    any address, carrying in its query whatever the text put there.
    """

    POLICY = (
        b"img-src 'self' data: blob:; media-src 'self' data: blob:; frame-src 'self'; object-src 'none'; "
        b"form-action 'self'; base-uri 'self'"
    )

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_policy(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"content-security-policy" for name, _ in headers):
                    headers.append((b"content-security-policy", self.POLICY))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_policy)


def ui_middleware(settings) -> list:
    """Middleware for Gradio's app: the Host/Origin guard, the page policy, and login throttling when there
    is a login."""
    from starlette.middleware import Middleware

    # Uploads have their own limit (Gradio's max_file_size), checked with a clear message in the page.
    body_limit = int(max(settings.max_request_mb, settings.max_upload_mb + 1) * 2**20)
    middleware = [
        Middleware(HostOriginGuard, **guard_options(settings)),
        Middleware(PagePolicy),
        Middleware(BodySizeLimit, limit=body_limit),
    ]
    if settings.auth is not None:
        middleware.append(Middleware(FailedLoginThrottle, outcome=ui_login_outcome, attempt=is_login, what="logins"))
        middleware.append(Middleware(LoginRequired))
    return middleware


def guard_options(settings) -> dict:
    """HostOriginGuard's arguments for these settings (the same on both ports)."""
    named = split_list(settings.allowed_hosts)
    return {
        "hosts": allowed_hosts(settings.host, named),
        "cors_origins": split_list(settings.cors_origins),
        "ports": {port for port in (settings.port, settings.api_port) if port},
        "named_hosts": [host for host in named if host != ANY],
    }


def install_api_guards(api, settings) -> None:
    """CORS only for ``--cors-origins`` (off by default), then the Host/Origin guard outside everything."""
    from starlette.middleware.cors import CORSMiddleware

    origins = split_list(settings.cors_origins)
    if origins:
        api.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "x-api-key", "anthropic-version"],
        )
    api.add_middleware(BodySizeLimit, limit=int(settings.max_request_mb * 2**20))
    if settings.api_key is not None:
        api.add_middleware(
            FailedLoginThrottle,
            outcome=api_key_outcome,
            attempt=carries_a_key,
            what="API keys",
            verdict=api_key_verdict(settings.api_key.get_secret_value()),
        )
    api.add_middleware(HostOriginGuard, **guard_options(settings))
