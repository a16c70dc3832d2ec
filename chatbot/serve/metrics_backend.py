"""``MeteredBackend``: the app's backend with every reply recorded in its ``ServerMetrics``.

``App`` wraps whatever backend it is given (a model loaded here or a remote server) in one, so the web
chat, the API and anything else that asks ``app.backend`` are counted by the same code from the same
events: nothing above the backends records a reply itself, and nothing asks which backend it holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..chat.backend import Backend, BackendStatus
from ..chat.events import AnswerDelta, ChatDone, ChatEvent, ThinkingDelta, ToolCallDelta
from ..chat.request import ChatRequest
from ..engine.limits import ReplyLimits
from .metrics import ServerMetrics, source_of

TEXT_EVENTS = (ThinkingDelta, AnswerDelta, ToolCallDelta)


class MeteredBackend:
    """A ``Backend`` that passes everything to ``inner`` and records each reply's stream in ``metrics``."""

    def __init__(self, inner: Backend, metrics: ServerMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    # --- the Backend protocol, passed on ---------------------------------------------------------------------

    @property
    def limits(self) -> ReplyLimits:
        return self.inner.limits

    @property
    def queue_size(self) -> int:
        return self.inner.queue_size

    @property
    def max_batch(self) -> int:
        return self.inner.max_batch

    @property
    def loaded(self) -> Any:
        return self.inner.loaded

    @property
    def model_name(self) -> str | None:
        return self.inner.model_name

    def context_window(self) -> int | None:
        return self.inner.context_window()

    def status(self) -> BackendStatus:
        return self.inner.status()

    def describe(self) -> str:
        return self.inner.describe()

    def start_loading(self) -> None:
        self.inner.start_loading()

    def load(self) -> Any:
        return self.inner.load()

    def batch(self, requests: Sequence[ChatRequest], cancel: threading.Event | None = None) -> list[ChatDone]:
        return self.inner.batch(requests, cancel)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # What a backend offers beyond the protocol (a local one's engine, say) stays reachable.
        return getattr(self.inner, name)

    # --- replies ------------------------------------------------------------------------------------------

    def stream(self, request: ChatRequest, cancel: threading.Event | None = None) -> Iterator[ChatEvent]:
        """``inner.stream``, recording the reply when it ends (done, failed or left by its caller)."""
        started = time.perf_counter()
        first: float | None = None
        outcome = "cancelled"  # the caller stopped reading before the end
        recorded = False
        try:
            for event in self.inner.stream(request, cancel):
                if first is None and isinstance(event, TEXT_EVENTS):
                    first = time.perf_counter()
                elif isinstance(event, ChatDone):
                    # Recorded before the caller sees the end: a scrape after the reply counts it.
                    recorded = True
                    self._record(request, event.finish_reason, event, started, first, time.perf_counter())
                yield event
        except Exception:  # refused, failed, or a bug: counted, then on to the caller as before
            outcome = "error"
            raise
        finally:
            if not recorded:
                self._record(request, outcome, None, started, first, time.perf_counter())

    def _record(
        self,
        request: ChatRequest,
        outcome: str,
        done: ChatDone | None,
        started: float,
        first: float | None,
        ended: float,
    ) -> None:
        stats = done.stats if done is not None else {}
        new_tokens = int(stats.get("new_tokens", 0) or 0)
        queue_seconds = stats.get("queue_seconds")
        self.metrics.observe_reply(
            source_of(request.client),
            outcome,
            # The choices of one request share their prompt: it counts once, with the first choice.
            prompt_tokens=int(stats.get("prompt_tokens", 0) or 0) if request.choice == 0 else 0,
            new_tokens=new_tokens,
            queue_seconds=float(queue_seconds) if queue_seconds is not None and done is not None else None,
            first_seconds=first - started if first is not None else None,
            decode_seconds=ended - first if first is not None else None,
            total_seconds=ended - started,
        )
