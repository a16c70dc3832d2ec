"""Stopping engines before the interpreter exits, so that a script ends cleanly whatever is running.

Why: the engine's worker and loader (and a remote backend's event loop) are daemon threads, so an idle
one never keeps a script alive. But when the interpreter finalizes, a daemon thread that comes back from
a call that let go of the GIL (a torch op, an xgrammar or tokenizer call) is ended on the spot with
``pthread_exit``; that unwinds its stack through C++ frames which must not be unwound, and the C++
runtime aborts the whole process: ``terminate called without an active exception``, exit code 134,
buffered output lost. It happened to scripts that left a ``stream_chat`` loop with ``break`` or simply
ended while a reply was still generating.

So every engine and remote backend that starts a thread registers here (``close_at_exit``), and one
``atexit`` hook closes them all: their requests are cancelled, a model load in progress stops at its next
step, and their threads are joined. ``atexit`` hooks run while the interpreter is still whole: after the
main thread is done and non-daemon threads are joined, before any thread can be cut off.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Protocol

from ..model.loader import LoadProgress

log = logging.getLogger(__name__)
# How long the exit waits for one engine's threads: a decode step or a prefill chunk is far shorter; a
# first-use compile of the decode step can take about a minute on a slow CPU.
EXIT_WAIT_SECONDS = 120.0


class Closable(Protocol):
    def close(self, timeout: float = ...) -> None: ...


_open: weakref.WeakSet[Closable] = weakref.WeakSet()
_lock = threading.Lock()


def close_at_exit(resource: Closable) -> None:
    """Close ``resource`` (``close(timeout=EXIT_WAIT_SECONDS)``) when the interpreter exits, if it is alive then."""
    with _lock:
        _open.add(resource)


def close_all() -> None:
    """Close every registered engine and backend that is still alive (the ``atexit`` hook)."""
    with _lock:
        resources = list(_open)
        _open.clear()
    for resource in resources:
        try:
            resource.close(timeout=EXIT_WAIT_SECONDS)
        except Exception:  # one that fails to close must not keep the others running into finalization
            log.exception("Closing %r at exit failed", resource)


atexit.register(close_all)


class LoadStopped(BaseException):
    """Raised inside a model load that was asked to stop (its engine closed).

    A ``BaseException``, like ``KeyboardInterrupt``: it must go through the loader's fallbacks (which try
    the next precision on an ``Exception``) straight to the engine, which turns it into a ``ChatbotError``.
    """


@dataclass
class StoppableProgress(LoadProgress):
    """A load's progress that also carries a stop request: the load ends at its next progress step."""

    stopped: bool = False

    def stop(self) -> None:
        self.stopped = True

    def update(self, stage: str, fraction: float) -> None:
        if self.stopped:
            raise LoadStopped(stage)
        super().update(stage, fraction)
