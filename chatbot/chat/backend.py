"""``Backend``: what the web chat, the API, ``Qwen3ChatBot`` and the terminal chat need from whatever answers.

Two implementations: ``chat.local.LocalBackend`` (a model loaded in this process, over
``engine.ChatEngine``) and ``chat.remote.RemoteBackend`` (another OpenAI-compatible server). Callers
never branch on which one they hold: a reply is ``backend.stream(ChatRequest.build(...,
limits=backend.limits), cancel)``, and what the badge, ``/health``, the terminal chat and ``doctor``
show is one ``BackendStatus``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the chat layer's own modules import this one
    from ..engine.limits import ReplyLimits
    from ..model.precision import PrecisionDecision
    from .events import ChatDone, ChatEvent
    from .request import ChatRequest


@dataclass(frozen=True)
class BackendInfo:
    """What is known of a remote server: as it reported itself, never guessed."""

    url: str
    model: str | None = None  # the model requests ask for (--backend-model, else the first listed)
    models: tuple[str, ...] = ()  # what GET /v1/models listed
    max_model_len: int | None = None  # the context length, when /v1/models reports it (vLLM does)
    reachable: bool | None = None  # None: not asked yet
    error: str | None = None
    checked_at: float | None = None  # time.time() of the last answer or failure
    retry_in: float | None = None  # seconds until the next try, while unreachable
    round_trip_seconds: float | None = None  # of the last GET /v1/models
    precision: str | None = None  # as the operator stated it (--backend-precision)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "models": list(self.models)}


@dataclass(frozen=True)
class BackendStatus:
    """Where a backend stands, in one value: the badge, ``/health``, the terminal chat and ``doctor`` show it.

    Attributes:
        state: "not loaded", "loading", "ready" or "failed" (a model that cannot load, a server that
            cannot be reached).
        stage, fraction: the load's progress (a remote server: "connected" or "connecting to URL").
        error: why it failed, in one line.
        device_fault: serving ended on a sticky device fault (a restart is the fix), not a failed load.
        settled: nothing changes by itself any more (a local model loaded or failed); a remote server
            never is (it may go away and come back).
        context_window: the context in tokens (a remote server's only when it reports it).
        queue: running, waiting, paused, max_batch, size and busy.
        precision, weights_bytes, device, generated: the local model's decision, memory, device, and
            whether it is a generated demo model.
        remote: what a remote server reported of itself.
    """

    state: str
    stage: str = ""
    fraction: float = 0.0
    error: str | None = None
    device_fault: bool = False
    settled: bool = False
    context_window: int | None = None
    queue: dict[str, Any] = field(default_factory=dict)
    precision: PrecisionDecision | None = None
    weights_bytes: int | None = None
    device: Any = None
    generated: bool = False
    remote: BackendInfo | None = None

    def summary(self) -> str:
        """One line: what answers, and how it stands."""
        remote = self.remote
        if remote is not None:
            parts = [f"remote {remote.model or 'model'} at {remote.url}"]
            if remote.max_model_len:
                parts.append(f"context {remote.max_model_len:,} tokens")
            if remote.precision:
                parts.append(f"precision {remote.precision} (stated by the operator)")
            reachable = remote.reachable
            parts.append("reachable" if reachable else "not reached yet" if reachable is None else "unreachable")
            return ", ".join(parts)
        if self.precision is not None:
            return self.precision.summary()
        if self.state == "failed":
            return f"the model failed to load: {self.error}"
        return f"{self.state}: {self.stage} ({self.fraction:.0%})" if self.stage else self.state


class Backend(Protocol):
    """The shared surface of ``LocalBackend`` and ``RemoteBackend``."""

    @property
    def limits(self) -> ReplyLimits:
        """The server's bounds on one reply; requests are built under them (``ChatRequest.build``)."""
        ...

    @property
    def queue_size(self) -> int: ...

    @property
    def max_batch(self) -> int: ...

    @property
    def loaded(self) -> Any:
        """The local ``LoadedModel`` (tokenizer, context, precision); always None for a remote backend."""
        ...

    @property
    def model_name(self) -> str | None:
        """The model's name as the backend reports it (a remote server's); None when the app names it."""
        ...

    def context_window(self) -> int | None: ...

    def status(self) -> BackendStatus: ...

    def describe(self) -> str:
        """One line on what answers (waits for the load or the server's first answer)."""
        ...

    def start_loading(self) -> None: ...

    def load(self) -> Any:
        """Load now (a local model) or ask the server once (a remote one); raises the load error."""
        ...

    def stream(self, request: ChatRequest, cancel: threading.Event | None = None) -> Iterator[ChatEvent]:
        """The reply's events, ending with ``ChatDone``; ``cancel`` stops it ("cancelled").

        Raises:
            InvalidRequestError, ContextLengthError: the request does not fit; nothing was generated.
            QueueFullError: too many requests waiting.
            GenerationError, BackendError, BackendUnavailableError: the reply failed.
        """
        ...

    def batch(self, requests: Sequence[ChatRequest], cancel: threading.Event | None = None) -> list[ChatDone]:
        """Replies to independent requests, generated together."""
        ...

    def close(self) -> None: ...
