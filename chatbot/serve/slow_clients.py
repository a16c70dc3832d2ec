"""Connections that never finish their request: closed after a deadline instead of held forever.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but a connection that opens
and then sends nothing, or sends its headers or its body a byte at a time, is kept as long as the client
likes. Enough of them exhaust the process's file descriptors (or the API's connection limit) and nobody
else is served. ``DeadlineH11Protocol`` gives every request ``REQUEST_HEAD_SECONDS`` from the connection
(or the previous response) to the end of its headers, then its body ``BODY_GRACE_SECONDS`` plus one
second per ``MIN_BODY_BYTES_PER_SECOND`` bytes received (time the app itself is not reading does not
count); the response is not limited. One address may hold at most ``PER_ADDRESS_CONNECTIONS``
connections, so that one client cannot take every connection the server will hold.

The API's server is given the class directly (``uvicorn.Config(http=...)``). Gradio builds its own
``uvicorn.Config`` inside ``launch()`` with no way to pass one, so ``deadline_by_default()`` makes it
uvicorn's default ("auto") for this process before the web UI starts.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn import config as uvicorn_config
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
REQUEST_HEAD_SECONDS = 10.0
# A body must arrive at this average rate after a grace period: 8 MiB (the default --max-request-mb) may take
# about 17 minutes, a body sent a byte a second is cut after the grace.
BODY_GRACE_SECONDS = 10.0
MIN_BODY_BYTES_PER_SECOND = 8 * 1024
# Half of the API's connection limit (server.API_CONNECTION_LIMIT): the other half stays for other clients.
PER_ADDRESS_CONNECTIONS = 500
BUSY_TEXT = b"Too many connections from this address; try again later.\n"
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 5\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(BUSY_TEXT), BUSY_TEXT)
)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers."""

    head_seconds = REQUEST_HEAD_SECONDS
    body_grace_seconds = BODY_GRACE_SECONDS
    min_body_rate = MIN_BODY_BYTES_PER_SECOND
    per_address = PER_ADDRESS_CONNECTIONS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._body_deadline: asyncio.TimerHandle | None = None
        self._body_started = 0.0
        self._body_bytes = 0
        address = self.client[0] if self.client else None
        held = sum(1 for c in self.connections if (getattr(c, "client", None) or ("",))[0] == address)
        if address is not None and held > self.per_address:
            log.warning("Refused a connection from %s: it holds %d already", address, self.per_address)
            transport.write(BUSY_RESPONSE)
            transport.close()
            return
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:  # the headers are in: a request runs
            self._disarm_head_deadline()
        self._watch_body(len(data))

    def _watch_body(self, received: int) -> None:
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            self._disarm_body_deadline()
            return
        if self._body_deadline is None and not self._body_bytes:  # the headers just ended
            self._body_started = self.loop.time()
        self._body_bytes += received
        self._disarm_body_deadline()
        allowed = self.body_grace_seconds + self._body_bytes / self.min_body_rate
        self._body_deadline = self.loop.call_at(self._body_started + allowed, self._body_too_slow)

    def _disarm_body_deadline(self) -> None:
        deadline = getattr(self, "_body_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._body_deadline = None
        if self.conn.their_state is not h11.SEND_BODY:
            self._body_bytes = 0

    def _body_too_slow(self) -> None:
        self._body_deadline = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app is not reading: not the client's time
            self._body_started += 1.0
            self._body_deadline = self.loop.call_later(1.0, self._body_too_slow)
            return
        client = self.client[0] if self.client else "unknown"
        log.warning(
            "Closed a connection from %s: its request body came slower than %d bytes/s", client, self.min_body_rate
        )
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()  # the next request on this connection gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        deadline = getattr(self, "_body_deadline", None)
        if deadline is not None:
            deadline.cancel()
        super().connection_lost(exc)

    _head_deadline: asyncio.TimerHandle | None

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_deadline = self.loop.call_later(self.head_seconds, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        deadline = getattr(self, "_head_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        running = self.cycle is not None and not self.cycle.response_complete
        if not running and not self.transport.is_closing():
            self.transport.close()


def deadline_by_default() -> None:
    """Make ``DeadlineH11Protocol`` what uvicorn servers of this process use when not told otherwise.

    uvicorn looks "auto" up in this table when a server starts; without httptools (not installed by
    this project) "auto" meant h11 already, so only the deadline changes.
    """
    uvicorn_config.HTTP_PROTOCOLS["auto"] = f"{__name__}:{DeadlineH11Protocol.__name__}"
