"""What a web UI session keeps and sends: its stop signals, its sampling choices, its saved conversations.

Used by ``ui.py``; plain Python, testable without a browser. A saved conversation is the JSON
that goes to the browser's storage (one localStorage entry per chat) and into exported files::

    {"format": "qwen3-chat-conversation", "id": "9f3c...", "title": "...", "updated": 1732400000.0,
     "system_prompt": "...",
     "messages": [{"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "thinking": "...", "stats": {...}}]}

A message written several ways (an edited question, a regenerated answer) also has ``versions`` and
``version`` (see ``ui_versions``).

A reply still streaming is saved as it stands, its stats saying ``"finish_reason": "interrupted"``,
so a reload or a closed tab keeps the question and the reply as far as it got.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..authoring.modelgen import demo_model_path
from ..chat.reply import Conversation
from ..engine.sampling import NON_THINKING_DEFAULTS, THINKING_DEFAULTS
from ..errors import ChatbotError
from .attachments import split
from .ui_asked import AskedReplies
from .ui_versions import turn_record, turns_from_records

log = logging.getLogger(__name__)
MODE_KEYS = ("temperature", "top_p", "top_k")
EXPORT_FORMAT = "qwen3-chat-conversation"
TITLE_LENGTH = 48
# Most messages a chat the server holds may have, however it grows (typed, imported, opened, restored): tens of
# thousands of short ones fit in --max-chat-mb but cost about a kilobyte each once held.
MAX_CHAT_MESSAGES = 2000


class ReplySignal(threading.Event):
    """A reply's stop signal, and where the reply is shown.

    ``discarded``: "detached" while its tab shows another chat (the reply goes on and is saved, not drawn),
    "dropped" once its chat was deleted (nothing of it is kept); "" while its chat is on the screen.
    ``chat_id`` and ``conversation`` say which chat it grows, so opening that chat again shows it live.
    ``closed``: set by the tab closing or reloading (not by its Stop button), so the reply is kept as interrupted.
    ``saved``: the chat as last sent to be saved (JSON text), see ``StopSignals.newer_than_page``.
    """

    def __init__(self, chat_id: str = "", conversation: Conversation | None = None) -> None:
        super().__init__()
        self.discarded = ""
        self.closed = False
        self.chat_id = chat_id
        self.conversation = conversation
        self.saved = ""
        self._drawing = threading.Condition()
        self._busy = False

    @contextmanager
    def drawing(self) -> Iterator[bool]:
        """Around a yield of the reply's screen outputs: True while its chat is on the screen.

        ``discard`` waits for the draw under way, so nothing drawn for this reply can land on the page
        after what a chat switch or a deletion returns.
        """
        with self._drawing:
            self._busy = True
        try:
            yield not self.discarded
        finally:
            with self._drawing:
                self._busy = False
                self._drawing.notify_all()

    def saving(self, text: str) -> str:
        """``text`` (the chat as JSON) is on its way to be saved; returned."""
        self.saved = text
        return text

    def interrupted(self, finish_reason: str | None) -> bool:
        """Whether a reply that ended with ``finish_reason`` was cut by the server or a closed tab, not by Stop."""
        return finish_reason == "cancelled" and (self.closed or not self.is_set())

    def discard(self, how: str, timeout: float) -> None:
        """Mark the reply "detached" or "dropped", then wait (at most ``timeout`` s) for a draw under way."""
        self.discarded = how
        with self._drawing:
            self._drawing.wait_for(lambda: not self._busy, timeout)


class StopSignals:
    """The stop signals of the replies each browser session has running (shown or not).

    ``asked``: the replies asked for and not started yet. Detaching, dropping or stopping a session's replies
    first waits for those (bounded), so a reply asked for just before a chat switch or a Stop is one of them.

    A reply that ended in a chat the tab had left keeps its last save here for a while (``ENDED_KEPT_SECONDS``,
    ``ENDED_KEPT`` per session): a page that is behind (a busy machine) may not have written it yet when that
    chat is opened again, and the chat would open as it was mid-reply (``newer_than_page``).
    """

    ENDED_KEPT = 4
    ENDED_KEPT_SECONDS = 120.0

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._by_session: dict[str, set[ReplySignal]] = {}
        self._ended: dict[str, deque[tuple[float, str, str]]] = {}  # session: (when, chat id, saved JSON)
        self._switching: dict[str, int] = {}  # session: chat switches under way (see ``detach``)
        self.asked = AskedReplies()

    @contextmanager
    def reply(
        self, session: str, chat_id: str = "", conversation: Conversation | None = None
    ) -> Iterator[ReplySignal | None]:
        """A fresh signal registered for ``session`` while the reply runs; None (nothing registered) when
        the session already has a reply running in the chat it shows (one reply at a time per chat shown)."""
        signal = ReplySignal(chat_id, conversation)
        with self._lock:
            taken = any(not other.discarded for other in self._by_session.get(session, ()))
            if not taken:
                self._by_session.setdefault(session, set()).add(signal)
            if session in self._switching:  # the tab is leaving its chat: this reply is not drawn, not even once
                signal.discarded = "detached"
        if taken:
            yield None
            return
        try:
            yield signal
        finally:
            with self._lock:
                signals = self._by_session.get(session, set())
                signals.discard(signal)
                if not signals:
                    self._by_session.pop(session, None)
                self._forget_ended(time.monotonic() - self.ENDED_KEPT_SECONDS)  # tabs gone for good too
                if signal.discarded == "detached" and signal.saved and signal.chat_id:
                    ended = self._ended.setdefault(session, deque(maxlen=self.ENDED_KEPT))
                    ended.append((time.monotonic(), signal.chat_id, signal.saved))
                self._lock.notify_all()

    def _forget_ended(self, before: float) -> None:
        """Drop the kept saves (``newer_than_page``) made before ``before``, in every session (under the lock)."""
        for session in [s for s, ended in self._ended.items() if ended[-1][0] < before]:
            del self._ended[session]

    def newer_than_page(self, session: str, chat_id: str, record: Any) -> Any:
        """``record`` (a chat as the page or the store holds it), or this session's last save of that chat by a
        reply that ended while the tab showed another chat, if that save is newer (``updated``)."""
        with self._lock:
            ended = self._ended.get(session)
            if not ended:
                return record
            too_old = time.monotonic() - self.ENDED_KEPT_SECONDS
            while ended and ended[0][0] < too_old:
                ended.popleft()
            if not ended:
                self._ended.pop(session, None)
            saved = next((text for _, kept_id, text in reversed(ended) if kept_id == chat_id), "")
        if not saved or not isinstance(record, dict):
            return record  # a chat no longer kept (deleted meanwhile) is not brought back
        kept = json.loads(saved)
        return kept if float(kept.get("updated") or 0) > float(record.get("updated") or 0) else record

    def _shown(self, session: str) -> list[ReplySignal]:
        with self._lock:
            return [signal for signal in self._by_session.get(session, ()) if not signal.discarded]

    def stop(self, session: str, *, everywhere: bool = False, closed: bool = False) -> int:
        """Set the signals of the replies ``session`` shows (``everywhere``: its other chats' too; ``closed``: the
        tab closed or reloaded, see ``ReplySignal.closed``); returns how many."""
        if not everywhere:  # Stop pressed as a reply is starting stops that reply
            self.asked.wait(session, self.asked.limit)
        with self._lock:
            signals = list(self._by_session.get(session, ())) if everywhere else self._shown(session)
        for signal in signals:
            signal.closed = signal.closed or closed
            signal.set()
        return len(signals)

    def running(self, session: str) -> bool:
        """Whether ``session`` has a reply running in the chat it shows."""
        return bool(self._shown(session))

    def detach(self, session: str, timeout: float) -> None:
        """The tab moves to another chat: its reply goes on, saved but not drawn (see ``ReplySignal.discard``).

        A reply asked for in the chat left is waited for and stays there. One that starts during the wait is
        detached from its start: the page can apply two events' outputs out of order, so its first draw (the
        question) could otherwise land over the chat switched to."""
        with self._lock:
            self._switching[session] = self._switching.get(session, 0) + 1
        try:
            self.asked.wait(session, timeout)
            for signal in self._shown(session):
                signal.discard("detached", timeout)
        finally:
            with self._lock:
                left = self._switching.pop(session) - 1
                if left:
                    self._switching[session] = left

    def attach(self, session: str, chat_id: str) -> ReplySignal | None:
        """The tab shows ``chat_id`` again: its reply still running (if any) is drawn again; returned."""
        with self._lock:
            for signal in self._by_session.get(session, ()):
                if signal.discarded == "detached" and signal.chat_id == chat_id and not signal.is_set():
                    signal.discarded = ""
                    return signal
        return None

    def stop_and_wait(self, session: str, timeout: float, *, drop: bool = False) -> bool:
        """Stop the replies ``session`` shows (``drop``: nothing of them is kept), then wait (at most ``timeout``
        s) until they have ended, so that nothing they still send can land on the page after what the caller
        returns; False on timeout."""
        self.asked.wait(session, timeout)
        signals = self._shown(session)
        for signal in signals:
            if drop:
                signal.discard("dropped", timeout)
            signal.set()
        with self._lock:
            return self._lock.wait_for(
                lambda: not any(signal in self._by_session.get(session, ()) for signal in signals), timeout
            )


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


def saved_form(
    conversation: Conversation,
    chat_id: str = "",
    title: str = "",
    pending: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The conversation as JSON-ready data (browser storage and export): messages with stats.

    ``pending``: the exchange still streaming (question, and the reply so far), saved after the rest.
    """
    messages = [turn_record(turn) for turn in conversation.turns] + (pending or [])
    record: dict[str, Any] = {"format": EXPORT_FORMAT}
    if chat_id:
        record |= {"id": chat_id, "title": title or title_of(messages), "updated": round(time.time(), 3)}
    return record | {"system_prompt": conversation.system_prompt, "messages": messages}


def title_of(messages: list[dict[str, Any]]) -> str:
    """A chat's default title: the start of its first question."""
    first = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
    typed, files = split(str(first))  # a question of attached files only is named by them
    line = " ".join((typed if typed.strip() else " ".join(item.name for item in files)).split())
    return (line[:TITLE_LENGTH].rstrip() + "…" if len(line) > TITLE_LENGTH else line) or "New chat"


def new_chat_id() -> str:
    return secrets.token_hex(8)


def pending_exchange(message: str, thinking: str, answer: str, stats: dict[str, Any]) -> list[dict[str, Any]]:
    """A streaming exchange as saved messages, marked interrupted until it ends."""
    reply = {"role": "assistant", "content": answer, "thinking": thinking}
    return [{"role": "user", "content": message}, reply | {"stats": {**stats, "finish_reason": "interrupted"}}]


def max_new_tokens_bound(context: int) -> int:
    """The largest "Max new tokens" a context window allows, leaving room for a prompt (multiple of 16)."""
    return max(16, (context - max(64, context // 8)) // 16 * 16)


def check_chat_size(data: Any, limit_mb: float, text: str | None = None, fix: str | None = None) -> None:
    """Refuse a chat (saved form, or its JSON ``text``) larger than ``limit_mb`` or with more than
    ``MAX_CHAT_MESSAGES`` messages (earlier versions included) before the server holds it: held, every
    message costs the server far more than its text.

    Raises:
        ChatbotError: the chat is too large, saying by how much and what to do (``fix``, else: import less).
    """
    size = len((text if text is not None else json.dumps(data, ensure_ascii=False)).encode("utf-8"))
    title = data.get("title") if isinstance(data, dict) else None
    name = f"The chat {title!r}" if isinstance(title, str) and title else "This chat"
    if size > limit_mb * 2**20:
        raise ChatbotError(
            f"{name} is {size / 2**20:.1f} MB; this server holds chats of at most {limit_mb:g} MB.",
            fix=fix or "Import a shorter chat, or start the server with a larger --max-chat-mb.",
        )
    count = count_messages(data.get("messages") if isinstance(data, dict) else data)
    if count > MAX_CHAT_MESSAGES:
        raise ChatbotError(
            f"{name} has {count:,} messages; this server holds chats of at most {MAX_CHAT_MESSAGES:,}.",
            fix=fix or "Import a shorter chat.",
        )


def count_messages(items: Any, depth: int = 0) -> int:
    """Messages in a saved chat's message list, with those kept as earlier versions (``versions[].after``)."""
    if not isinstance(items, list) or depth > 8:
        return 0
    count = 0
    for item in items:
        if not isinstance(item, dict):
            continue
        count += 1
        for version in item.get("versions") or []:
            if isinstance(version, dict):
                count += count_messages(version.get("after"), depth + 1)
    return count


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
    prompt = saved_prompt if isinstance(saved_prompt, str) else system_prompt
    return Conversation(prompt, turns_from_records(items))


def storage_secret() -> str:
    """The key of the browser-side history, kept across restarts (a fresh one would orphan saved chats).

    It also seeds the browser cookie's signing key, so the file is this user's only (0600): made so, and an
    older one readable by others is made so once, with a log line.
    """
    path = demo_model_path().parent / "ui-storage-secret"  # the app's cache folder
    try:
        if path.exists():
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
                log.warning("%s was readable by other users; it is now readable by this user only", path)
            return path.read_text(encoding="utf-8").strip()
        secret = secrets.token_urlsafe(24)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
        except FileExistsError:  # another app process made it just now
            time.sleep(0.1)
            return path.read_text(encoding="utf-8").strip()
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(secret)
        return secret
    except OSError as exc:
        log.warning("Cannot keep the chat storage key in %s (%s); saved chats last until a restart", path, exc)
        return secrets.token_urlsafe(24)
