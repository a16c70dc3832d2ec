"""Replies asked for in a tab but not started yet: a chat switch waits for them, so each stays in its own chat.

A reply in the page is two steps: the first swaps Send for Stop, the second (the reply itself) is sent by the
page once the first is done, with the chat shown at that moment. "New chat" (or another chat opened, or
Clear) clicked right after Send would otherwise win that race: the reply would then read the new chat (the
message sent into it), or start after the switch had looked for a reply to detach and draw into the chat
switched to. So the first step notes the reply as asked for (``expect``), the reply counts as arrived at its
first output or its end (``arriving``: by then it has read its chat and registered its stop signal), and
``StopSignals`` waits for the session's asked replies (``wait``) before it detaches, drops or stops any.

Plain Python, testable without a browser::

    .venv/bin/python -m pytest tests/unit/test_ui_asked.py -q
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
# How long a reply asked for may take to start before nothing waits for it any more: a page that closed
# between the two steps never sends the second, and a switch then waits this long at most, once.
ASKED_SECONDS = 10.0


class AskedReplies:
    """Per browser session: when each reply asked for and not yet started was asked for."""

    def __init__(self, limit: float = ASKED_SECONDS) -> None:
        self.limit = limit
        self._lock = threading.Condition()
        self._by_session: dict[str, deque[float]] = {}

    def expect(self, session: str) -> None:
        """A reply was asked for in ``session`` (its first step has run); its second step is on its way."""
        with self._lock:
            self._by_session.setdefault(session, deque()).append(time.monotonic())

    def arrived(self, session: str) -> None:
        """A reply of ``session`` has started (or was refused): the oldest one asked for is no longer awaited.
        Nothing when none was asked for (a program calling /chat runs no first step)."""
        with self._lock:
            asked = self._by_session.get(session)
            if asked:
                asked.popleft()
            if not asked:
                self._by_session.pop(session, None)
            self._lock.notify_all()

    def pending(self, session: str) -> int:
        """How many replies ``session`` asked for that have not started (those older than ``limit`` forgotten)."""
        with self._lock:
            return self._pending(session)

    def _pending(self, session: str) -> int:
        asked = self._by_session.get(session)
        if not asked:
            return 0
        too_old = time.monotonic() - self.limit
        while asked and asked[0] < too_old:
            asked.popleft()
        if not asked:
            self._by_session.pop(session, None)
        return len(asked)

    def wait(self, session: str, timeout: float) -> bool:
        """Wait (at most ``timeout`` s, and never past ``limit`` after the ask) until every reply ``session``
        asked for has started; False if one had not."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending(session):
                now = time.monotonic()
                if now >= deadline:
                    return False
                forgotten = self._by_session[session][0] + self.limit  # the oldest ask, no longer awaited then
                self._lock.wait(max(min(deadline, forgotten) - now, 0.01))
            return True


def arriving(outputs: Iterator[T], asked: AskedReplies, session: str) -> Iterator[T]:
    """A reply's outputs, passed through; the reply counts as arrived (``AskedReplies.arrived``) at its first
    output or its end, whichever comes first: a reply registers its stop signal before its first output."""
    arrived = False
    try:
        for item in outputs:
            if not arrived:
                arrived = True
                asked.arrived(session)
            yield item
    finally:
        if not arrived:
            asked.arrived(session)
