"""Log rate limiting: a flood of requests must not turn into a flood of log lines that fills the disk.

Each message template (logger + format string, so "Invalid HTTP request received" from a thousand
connections counts as one kind) may log ``burst`` records per ``period`` seconds; further ones are
dropped and counted, and the next record of that kind that gets through says how many were dropped.
"""

from __future__ import annotations

import logging
import threading
import time


class RateLimitFilter(logging.Filter):
    """A ``logging.Filter`` for handlers: at most ``burst`` records of one template per ``period`` seconds."""

    def __init__(self, burst: int = 20, period: float = 60.0, capacity: int = 1000) -> None:
        super().__init__()
        self.burst, self.period, self.capacity = burst, period, capacity
        self.kinds: dict[tuple[str, str], tuple[float, int, int]] = {}  # window start, passed, dropped
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self.lock:
            start, passed, dropped = self.kinds.get(key, (now, 0, 0))
            if now - start >= self.period:
                start, passed = now, 0
            if passed >= self.burst:
                self.kinds[key] = (start, passed, dropped + 1)
                return False
            if dropped:
                record.msg = f"{record.msg} [{dropped} similar messages dropped]"
            if len(self.kinds) >= self.capacity and key not in self.kinds:
                self.kinds.clear()  # bounded: forget old kinds rather than grow
            self.kinds[key] = (start, passed + 1, 0)
        return True


LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")  # servers that log per connection


def install() -> RateLimitFilter:
    """Put one filter on the root logger's handlers and on the servers' own loggers (which keep it when
    uvicorn configures their handlers)."""
    flood_guard = RateLimitFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(flood_guard)
    for name in LOGGERS:
        logging.getLogger(name).addFilter(flood_guard)
    return flood_guard
