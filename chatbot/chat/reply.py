"""One reply from any backend, in a line: ``stream_reply(backend, messages, ...)`` and ``batch_reply``.

Both build a ``ChatRequest`` under the backend's limits and hand it to the backend (a ``ChatEngine``
is wrapped in its ``LocalBackend``). The events, the ``Conversation`` and the local pipeline live in
``events.py``, ``conversation.py`` and ``local.py``; their names are importable from here too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from .backend import Backend
from .backends import as_backend
from .conversation import Conversation, Turn
from .events import AnswerDelta, ChatDone, ChatEvent, Loading, QueuePosition, ThinkingDelta, ToolCallDelta
from .local import run_reply, wait_for_model
from .request import ChatRequest

__all__ = [
    "AnswerDelta",
    "ChatDone",
    "ChatEvent",
    "ChatRequest",
    "Conversation",
    "Loading",
    "QueuePosition",
    "ThinkingDelta",
    "ToolCallDelta",
    "Turn",
    "batch_reply",
    "run_reply",
    "stream_reply",
    "wait_for_model",
]


def stream_reply(
    backend: Any,
    messages: Sequence[dict[str, Any]],
    *,
    cancel: threading.Event | None = None,
    **request: Any,
) -> Iterator[ChatEvent]:
    """Stream the reply to ``messages`` from ``backend`` (a ``Backend`` or a ``ChatEngine``).

    ``request``: the keywords of ``ChatRequest.build`` (enable_thinking, tools, sampling options...);
    the backend's limits apply. Raises as ``ChatRequest.build`` and ``Backend.stream`` do.
    """
    chosen: Backend = as_backend(backend)
    built = ChatRequest.build(messages, limits=chosen.limits, **request)
    yield from chosen.stream(built, cancel)


def batch_reply(
    backend: Any,
    conversations: Sequence[Sequence[dict[str, Any]]],
    *,
    enable_thinking: bool = False,
    cancel: threading.Event | None = None,
    **sampling: Any,
) -> list[dict[str, Any]]:
    """Replies to several independent conversations, generated together in one batch.

    Returns one dict per conversation: thinking, answer, full_response, finish_reason, prompt_tokens,
    completion_tokens. Every conversation is checked before anything runs (raises like ``ChatRequest.build``).
    """
    chosen: Backend = as_backend(backend)
    requests = [
        ChatRequest.build(messages, enable_thinking=enable_thinking, limits=chosen.limits, **sampling)
        for messages in conversations
    ]
    return [
        {
            "thinking": done.thinking,
            "answer": done.answer,
            "full_response": done.full_response,
            "finish_reason": done.finish_reason,
            "prompt_tokens": done.stats["prompt_tokens"],
            "completion_tokens": done.stats["new_tokens"],
        }
        for done in chosen.batch(requests, cancel)
    ]
