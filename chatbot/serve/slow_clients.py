"""Connections that never finish their request: closed after a deadline instead of held forever.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but a connection that opens
and then sends nothing, or sends its headers a byte at a time, is kept as long as the client likes.
Enough of them exhaust the process's file descriptors and nobody else is served. ``DeadlineH11Protocol``
gives every request ``REQUEST_HEAD_SECONDS`` from the connection (or the previous response) to the end
of its headers; the body and the response are not limited by it.

The API's server is given the class directly (``uvicorn.Config(http=...)``). Gradio builds its own
``uvicorn.Config`` inside ``launch()`` with no way to pass one, so ``deadline_by_default()`` makes it
uvicorn's default ("auto") for this process before the web UI starts.
"""

from __future__ import annotations

import asyncio

from uvicorn import config as uvicorn_config
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_HEAD_SECONDS = 10.0


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers."""

    head_seconds = REQUEST_HEAD_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:  # the headers are in: a request runs
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()  # the next request on this connection gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
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
