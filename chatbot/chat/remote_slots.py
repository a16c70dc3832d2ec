"""How many requests this app sends to a remote server at once, and the bounded line of those waiting.

The server batches and schedules; this only bounds what one copy of the app holds open: at most
``max_batch`` requests in flight, at most ``queue_size`` waiting (first come, first served, each told
its position), and a refusal (``QueueFullError``) beyond, so memory stays bounded under a flood.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Generator

from ..errors import ChatbotError, QueueFullError
from .events import QueuePosition

POLL_SECONDS = 0.2  # how often a waiting request checks its stop signal


class RemoteSlots:
    """Thread-safe counters of running and waiting requests."""

    def __init__(self, max_batch: int, queue_size: int) -> None:
        self.max_batch = max_batch
        self.queue_size = queue_size
        self._cv = threading.Condition()
        self._running = 0
        self._waiting: collections.deque[object] = collections.deque()
        self.closed = False

    def occupancy(self) -> dict[str, int]:
        with self._cv:
            return {"running": self._running, "waiting": len(self._waiting), "paused": 0, "max_batch": self.max_batch}

    @property
    def busy(self) -> bool:
        return self._running > 0

    def take(self, cancel: threading.Event) -> Generator[QueuePosition, None, bool]:
        """Wait for a free slot, yielding the position while waiting; returns False when cancelled first.

        Raises:
            QueueFullError: ``queue_size`` requests are waiting already.
        """
        with self._cv:
            if self.closed:
                raise ChatbotError("The remote backend is shut down.")
            if self._running < self.max_batch and not self._waiting:
                self._running += 1
                return True
            if len(self._waiting) >= self.queue_size:
                raise QueueFullError(f"{self.queue_size} requests are already waiting for the model server.")
            ticket = object()
            self._waiting.append(ticket)
        shown = 0
        try:
            while True:
                with self._cv:
                    if self._waiting[0] is ticket and self._running < self.max_batch:
                        self._waiting.popleft()
                        self._running += 1
                        self._cv.notify_all()
                        return True
                    position = self._waiting.index(ticket) + 1
                    if cancel.is_set() or self.closed:
                        self._waiting.remove(ticket)
                        self._cv.notify_all()
                        return False
                if position != shown:
                    shown = position
                    yield QueuePosition(position)
                with self._cv:
                    self._cv.wait(POLL_SECONDS)
        except GeneratorExit:  # the caller went away while waiting: its place is given up
            with self._cv:
                if ticket in self._waiting:
                    self._waiting.remove(ticket)
                    self._cv.notify_all()
            raise

    def free(self) -> None:
        with self._cv:
            self._running -= 1
            self._cv.notify_all()

    def close(self) -> None:
        """Refuse new requests and end the waiting ones (they return False)."""
        with self._cv:
            self.closed = True
            self._cv.notify_all()
