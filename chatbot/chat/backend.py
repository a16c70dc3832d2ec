"""What the web chat, the API, ``Qwen3ChatBot`` and the terminal chat need from whatever answers.

Two implementations: the local ``engine.engine.ChatEngine`` (a model loaded in this process) and
``chat.remote.RemoteBackend`` (another OpenAI-compatible server). Callers never branch on which one
they hold except to describe it (the badge, ``/health``): every reply goes through
``chat.reply.stream_reply(backend, messages, ...)``, which runs the local model itself and hands the
request to a remote backend's own ``stream_reply``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class Progress(Protocol):
    def snapshot(self) -> tuple[str, float]: ...


class ChatBackend(Protocol):
    """The shared surface of ``ChatEngine`` and ``RemoteBackend``."""

    queue_size: int

    @property
    def status(self) -> str:
        """ "not loaded", "loading", "ready" or "failed" (a remote that cannot be reached)."""
        ...

    @property
    def load_error(self) -> BaseException | None: ...

    @property
    def loaded(self) -> Any:
        """The local ``LoadedModel`` (tokenizer, context, precision); always None for a remote backend."""
        ...

    @property
    def progress(self) -> Progress: ...

    @property
    def busy(self) -> bool: ...

    def occupancy(self) -> dict[str, int]: ...

    def start_loading(self) -> None: ...

    def close(self) -> None: ...


class StreamingBackend(ChatBackend, Protocol):
    """A backend that streams its own replies (``RemoteBackend``); see ``stream_reply`` for the arguments."""

    max_batch: int

    def stream_reply(self, messages: Any, **kwargs: Any) -> Iterator[Any]: ...
