"""Stopping on SIGTERM without cutting anyone off: new requests are refused, running replies get a grace
period, and a reply still running after it ends with a message rather than a cut connection.

``DrainingBackend`` stands in front of the app's backend (both servers call it): it counts the replies
streaming through it and, once ``drain`` has begun, refuses new ones with ``ShuttingDownError`` (the API
answers 503 ``shutting_down``; the web chat shows the message and keeps the text in the box). ``drain``
waits up to ``--shutdown-grace-seconds`` for the running replies to finish, then stops the rest: each ends
with ``ShuttingDownError`` (the API's stream sends it as its last event, then ``[DONE]``, and ends its
chunked response; the web chat shows it), as vLLM drains before it exits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..chat.backend import Backend
from ..chat.events import ChatDone, ChatEvent
from ..chat.request import ChatRequest
from ..errors import BackendUnavailableError

log = logging.getLogger(__name__)
STOP_WAIT_SECONDS = 10.0  # how long stopped replies get to send their last words


class ShuttingDownError(BackendUnavailableError):
    """The server is stopping: no new replies, and a reply running past the grace period is stopped."""

    code = "shutting_down"

    def __init__(self, stopped: bool = False) -> None:
        what = "this reply was stopped" if stopped else "it takes no new requests"
        super().__init__(f"The server is shutting down: {what}.", fix="Send it again once the server is back.")


class DrainingBackend:
    """The app's backend with a count of the replies streaming through it (see the module docstring);
    everything else is the wrapped backend's."""

    def __init__(self, backend: Backend) -> None:
        self.inner = backend
        self.closing = threading.Event()
        self._lock = threading.Condition()
        self._running: set[threading.Event] = set()  # the cancel signal of each running reply
        self._stopped: set[threading.Event] = set()  # those the drain set

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, request: ChatRequest, cancel: threading.Event | None = None) -> Iterator[ChatEvent]:
        """The wrapped backend's stream; raises ``ShuttingDownError`` once draining (or when the drain stopped it)."""
        if self.closing.is_set():
            raise ShuttingDownError()
        cancel = cancel if cancel is not None else threading.Event()
        with self._lock:
            self._running.add(cancel)
        try:
            for event in self.inner.stream(request, cancel):
                if isinstance(event, ChatDone) and event.finish_reason == "cancelled" and cancel in self._stopped:
                    raise ShuttingDownError(stopped=True)
                yield event
        finally:
            with self._lock:
                self._running.discard(cancel)
                self._stopped.discard(cancel)
                self._lock.notify_all()

    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def drain(self, grace: float) -> None:
        """Refuse new replies, wait up to ``grace`` seconds for the running ones, then stop the rest and wait
        (bounded) until they have ended."""
        self.closing.set()
        started = time.monotonic()
        with self._lock:
            if self._running:
                log.info("Shutting down: waiting up to %.0f s for %d running replies", grace, len(self._running))
            finished = self._lock.wait_for(lambda: not self._running, grace)
            if not finished:
                log.warning("Shutting down: stopping %d replies still running after %.0f s", len(self._running), grace)
                self._stopped |= self._running
                for cancel in self._running:
                    cancel.set()
                self._lock.wait_for(lambda: not self._running, STOP_WAIT_SECONDS)
        log.info("Shut down the replies in %.1f s", time.monotonic() - started)
