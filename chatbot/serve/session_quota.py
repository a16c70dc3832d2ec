"""Who a web chat tab belongs to, for fair turns and for the sessions the server holds.

A Gradio session hash is made up by the page, so a script can mint a new one per request: counted as a
client, each would get its own fair turn and queue places, and each would take one of the
``--max-sessions`` chats the server holds, pushing out the least recently used tabs' chats. So:

* fair turns go by who is asking, not by the tab: ``web_client`` is the login user (with ``--auth``) and
  the address, or the address alone;
* ``SessionQuota`` (used by ``session_owner.SessionOwnership`` when a request names a session hash the
  server has not seen) lets one address and one browser cookie start only ``burst`` new sessions at once,
  then ``per_minute`` more each minute (429 with Retry-After beyond), and lets one address hold at most
  ``share`` of the sessions: past it, its own least recently used session is let go, never another
  client's.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any

NEW_SESSION_BURST = 30  # a browser opening many tabs at once, or reloading often, stays well within it
NEW_SESSIONS_PER_MINUTE = 30
HELD_SHARE = 0.5  # the part of --max-sessions one address may hold
KEYS_KEPT = 10_000  # buckets and holders remembered (the oldest forgotten first)


def web_client(request: Any) -> str:
    """The fair-turn client of a web chat event (a ``gr.Request``): the login user and the address, or the
    address; never the session hash, which the page itself chooses."""
    client = getattr(request, "client", None)
    address = getattr(client, "host", None) or "unknown"
    user = getattr(request, "username", None)
    return f"ui:{user}@{address}" if user else f"ui:{address}"


class TokenBuckets:
    """Per key: ``burst`` at once, refilled at ``per_minute``; bounded to ``KEYS_KEPT`` keys."""

    def __init__(self, burst: int, per_minute: float) -> None:
        self.burst, self.rate = burst, per_minute / 60.0
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> tokens, at

    def wait_seconds(self, key: str, now: float) -> float:
        """Seconds until ``key`` has a token (0: it has one now)."""
        tokens, at = self.buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def take(self, key: str, now: float) -> None:
        tokens, at = self.buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        self.buckets[key] = (tokens - 1, now)
        if len(self.buckets) > KEYS_KEPT:
            self.buckets.popitem(last=False)


class SessionQuota:
    """New sessions per address and per browser, and sessions held per address (see the module docstring)."""

    def __init__(
        self,
        max_sessions: int,
        burst: int = NEW_SESSION_BURST,
        per_minute: float = NEW_SESSIONS_PER_MINUTE,
        share: float = HELD_SHARE,
    ) -> None:
        self.buckets = TokenBuckets(burst, per_minute)
        self.per_address = max(1, int(max_sessions * share))
        self.held: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()  # address -> its sessions, by use

    def refusal(self, address: str, browser: str, now: float | None = None) -> tuple[str, int] | None:
        """Why ``address`` / ``browser`` may not start a session now, and the seconds to wait (None: it may)."""
        now = time.monotonic() if now is None else now
        wait = max(self.buckets.wait_seconds(f"a:{address}", now), self.buckets.wait_seconds(f"b:{browser}", now))
        if wait <= 0:
            return None
        seconds = max(1, math.ceil(wait))
        return (
            f"Too many new chat tabs from this browser or address: wait {seconds} s, or use the tabs already open.",
            seconds,
        )

    def started(self, address: str, browser: str, session: str, now: float | None = None) -> list[str]:
        """Count a new ``session`` of ``address`` / ``browser``; returns that address's own sessions to let go
        (its least recently used ones beyond its share)."""
        now = time.monotonic() if now is None else now
        self.buckets.take(f"a:{address}", now)
        self.buckets.take(f"b:{browser}", now)
        return self.used(address, session)

    def used(self, address: str, session: str) -> list[str]:
        """``session`` of ``address`` was used: it is let go last among its address's. Returns the sessions
        to let go (a session let go and then used again by its tab is held again, within the share)."""
        sessions = self.held.pop(address, None) or OrderedDict()
        self.held[address] = sessions
        sessions[session] = None
        sessions.move_to_end(session)
        released = []
        while len(sessions) > self.per_address:
            released.append(sessions.popitem(last=False)[0])
        if len(self.held) > KEYS_KEPT:
            self.held.popitem(last=False)
        return released
