"""What a web UI session keeps and sends: its stop signals, its sampling choices, its saved conversation.

Used by ``ui.py``; plain Python, testable without a browser. A saved conversation is the JSON
that goes to the browser's storage and into exported files::

    {"format": "qwen3-chat-conversation", "system_prompt": "...",
     "messages": [{"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "thinking": "...", "stats": {...}}]}
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..authoring.modelgen import demo_model_path
from ..chat.reply import Conversation
from ..engine.sampling import NON_THINKING_DEFAULTS, THINKING_DEFAULTS
from ..errors import ChatbotError

log = logging.getLogger(__name__)
MODE_KEYS = ("temperature", "top_p", "top_k")
EXPORT_FORMAT = "qwen3-chat-conversation"


class StopSignals:
    """The stop signals of the replies each browser session has running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_session: dict[str, set[threading.Event]] = {}

    @contextmanager
    def reply(self, session: str) -> Iterator[threading.Event]:
        """A fresh signal registered for ``session`` while the reply runs."""
        signal = threading.Event()
        with self._lock:
            self._by_session.setdefault(session, set()).add(signal)
        try:
            yield signal
        finally:
            with self._lock:
                signals = self._by_session.get(session, set())
                signals.discard(signal)
                if not signals:
                    self._by_session.pop(session, None)

    def stop(self, session: str) -> int:
        """Set every signal of ``session``; returns how many replies were running."""
        with self._lock:
            signals = list(self._by_session.get(session, ()))
        for signal in signals:
            signal.set()
        return len(signals)


def is_mode_default(values: dict[str, Any]) -> bool:
    """Whether temperature/top_p/top_k are one mode's defaults (so the user has not changed them)."""
    return any(
        all(abs(float(values[key]) - float(defaults[key])) < 1e-6 for key in MODE_KEYS)
        for defaults in (THINKING_DEFAULTS, NON_THINKING_DEFAULTS)
    )


def sampling_kwargs(
    temperature: float,
    top_p: float,
    top_k: float,
    max_new_tokens: float,
    presence_penalty: float,
    repetition_penalty: float,
    min_new_tokens: float = 0,
) -> dict[str, Any]:
    """Slider values as ``stream_reply`` options; untouched mode defaults are left to the reply's mode."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(max_new_tokens),
        "min_new_tokens": min(int(min_new_tokens), int(max_new_tokens)),
        "presence_penalty": float(presence_penalty),
        "repetition_penalty": float(repetition_penalty),
    }
    chosen = {"temperature": float(temperature), "top_p": float(top_p), "top_k": int(top_k)}
    if not is_mode_default(chosen):
        kwargs.update(chosen)
    return kwargs


def saved_form(conversation: Conversation) -> dict[str, Any]:
    """The conversation as JSON-ready data (browser storage and export): messages with stats."""
    messages = conversation.to_list()
    for item, turn in zip(messages, conversation.turns, strict=True):
        if turn.role == "assistant" and turn.stats:
            item["stats"] = turn.stats
    return {"format": EXPORT_FORMAT, "system_prompt": conversation.system_prompt, "messages": messages}


def from_saved_form(data: Any, system_prompt: str) -> Conversation:
    """Rebuild a conversation from ``saved_form`` data or a bare message list (which takes ``system_prompt``).

    Raises:
        ChatbotError: the data is not a conversation.
    """
    items = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ChatbotError(
            "This file is not a conversation: expected a list of messages or an object with 'messages'.",
            fix="Import a file made by Export.",
        )
    saved_prompt = data.get("system_prompt") if isinstance(data, dict) else None
    conversation = Conversation.from_list(items, saved_prompt if isinstance(saved_prompt, str) else system_prompt)
    for item, turn in zip(items, conversation.turns, strict=True):
        stats = item.get("stats")
        if turn.role == "assistant" and isinstance(stats, dict):
            turn.stats = stats
    return conversation


def storage_secret() -> str:
    """The key of the browser-side history, kept across restarts (a fresh one would orphan saved chats)."""
    path = demo_model_path().parent / "ui-storage-secret"  # the app's cache folder
    try:
        if path.exists():
            return path.read_text(encoding="utf-8").strip()
        secret = secrets.token_urlsafe(24)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secret, encoding="utf-8")
        return secret
    except OSError as exc:
        log.warning("Cannot keep the chat storage key in %s (%s); saved chats last until a restart", path, exc)
        return secrets.token_urlsafe(24)
