"""Where the web chat keeps a login's chats: save, list, load and delete, in the page or on the server.

Two implementations of the same four operations, chosen once per event by ``ChatHandlers.chats``:

* ``PageChats``: the page keeps them (``assets/chat.js``, one localStorage entry per chat). The server has
  nothing to do: what the page sends (a saved chat, its index) is the answer, and the records the
  handlers send out are written there by the page. The default without ``--auth``.
* ``UserChats``: one login's chats in ``ChatStore``, a SQLite file (WAL) under the cache folder, so a
  phone and a laptop logged in as the same user see the same chats, and clearing a browser's site data
  loses nothing. The default with ``--auth`` (``--chat-store``). The page then keeps only the id of the
  chat each tab shows.

Every call is one short transaction on one connection, behind a lock; Gradio runs the handlers on worker
threads, never on the event loop. A login may keep at most ``MAX_STORED_CHATS`` chats and ``--chat-store-mb``
MB; a save past either is refused with a ``ChatbotError`` saying what to do.

    .venv/bin/python -m pytest tests/unit/test_chat_store.py -q
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

from ..errors import ChatbotError
from ..settings import Settings, cache_dir

log = logging.getLogger(__name__)
Record = dict[str, Any]
STORE_FILE = "chats.sqlite3"
MAX_STORED_CHATS = 1000  # per login: the list stays short enough to scroll, each row a few bytes at least
TOMBSTONES = 1000  # deleted chat ids remembered per login, so a reply's late save cannot bring one back
SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    user TEXT NOT NULL,
    id TEXT NOT NULL,
    title TEXT NOT NULL,
    updated REAL NOT NULL,
    size INTEGER NOT NULL,
    search TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (user, id)
);
CREATE INDEX IF NOT EXISTS chats_by_time ON chats (user, updated DESC);
"""


class Chats(Protocol):
    """A login's chats, as the handlers use them (``PageChats`` or ``UserChats``)."""

    where: str  # "in this browser" or "on this server", for messages

    def save(self, record: Record) -> None: ...

    def save_all(self, records: list[Record]) -> None: ...

    def load(self, chat_id: str, sent: Any) -> Record | None: ...

    def index(self, sent: Any) -> list[tuple[str, str]]: ...

    def delete(self, chat_id: str) -> None: ...

    def all(self) -> list[Record] | None: ...


class PageChats:
    """The chats the page keeps in the browser: the server only reads what the page sent with the event."""

    where = "in this browser"

    def save(self, record: Record) -> None:
        """Nothing here: the page writes every record the handlers send out."""

    def save_all(self, records: list[Record]) -> None:
        """Nothing here, as ``save``."""

    def load(self, chat_id: str, sent: Any) -> Record | None:
        """The saved chat the page sent (read from its storage), if it is the one asked for."""
        return sent if isinstance(sent, dict) and chat_id and str(sent.get("id") or "") == chat_id else None

    def index(self, sent: Any) -> list[tuple[str, str]]:
        """The page's own index of its chats ([[title, id], ...], newest first, already searched)."""
        if not isinstance(sent, list):
            return []
        return [(str(item[0]), str(item[1])) for item in sent if isinstance(item, list | tuple) and len(item) == 2]

    def delete(self, chat_id: str) -> None:
        """Nothing here: the page removes the chat when the handler names it."""

    def all(self) -> list[Record] | None:
        """None: only the page has them ("Export all" is done by the page)."""
        return None


class UserChats:
    """One login's chats in the server's ``ChatStore``.

    ``aliases``: chat ids kept under another id. A session that never loaded the page (a program using
    ``gradio_client``) still has the id every session starts with; its chat is kept under one of its own.
    """

    where = "on this server"

    def __init__(self, store: ChatStore, user: str, aliases: dict[str, str] | None = None) -> None:
        self.store = store
        self.user = user
        self.aliases = aliases or {}

    def save(self, record: Record) -> None:
        """Keep ``record`` (a ``saved_form`` with an id); one without messages is removed (no empty chats).

        Raises:
            ChatbotError: the chat or this login's chats would be over the store's bounds.
        """
        self.save_all([record])

    def save_all(self, records: list[Record]) -> None:
        """Keep every record, or none of them (an import that does not fit changes nothing).

        Raises:
            ChatbotError: as ``save``.
        """
        renamed = [
            record | {"id": self.aliases[record["id"]]} if record.get("id") in self.aliases else record
            for record in records
        ]
        self.store.put(self.user, renamed)

    def load(self, chat_id: str, sent: Any = None) -> Record | None:
        """The chat ``chat_id`` (``sent``, what the page holds, is only its id here), or None if there is none."""
        return self.store.get(self.user, self.aliases.get(chat_id, chat_id)) if chat_id else None

    def index(self, sent: Any) -> list[tuple[str, str]]:
        """[(title, id), ...] newest first; ``sent`` is ``{"query": text}`` from the page's search box."""
        query = sent.get("query") if isinstance(sent, dict) else ""
        return self.store.titles(self.user, query if isinstance(query, str) else "")

    def delete(self, chat_id: str) -> None:
        self.store.remove(self.user, self.aliases.get(chat_id, chat_id))

    def all(self) -> list[Record]:
        return self.store.records(self.user)


class ChatStore:
    """The SQLite file of every login's chats (``path``, made readable by this user only).

    ``max_bytes``: what one login's chats may take together; ``max_chat_bytes``: one chat (``--max-chat-mb``).

    Raises:
        ChatbotError: the file cannot be made or opened, naming it and what to do.
    """

    def __init__(self, path: Path, max_bytes: int, max_chat_bytes: int, max_chats: int = MAX_STORED_CHATS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_chat_bytes = max_chat_bytes
        self.max_chats = max_chats
        self._lock = threading.Lock()
        self._deleted: dict[str, OrderedDict[str, None]] = {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # never readable by others, nor its WAL
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a power cut may lose the last saves, never the file
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ChatbotError(
                f"The chat store {path} cannot be opened ({exc}).",
                fix="Give a writable file with --chat-store-file, or keep chats in the browser (--chat-store browser).",
            ) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def user(self, user: str, aliases: dict[str, str] | None = None) -> UserChats:
        return UserChats(self, user, aliases)

    # --- what UserChats calls -------------------------------------------------------------------------

    def put(self, user: str, records: list[Record]) -> None:
        """Write ``records`` for ``user`` in one transaction, within the bounds (see ``UserChats.save``)."""
        rows, emptied, undeleted = [], [], []
        for record in records:
            chat_id = str(record.get("id") or "") if isinstance(record, dict) else ""
            if not chat_id:
                continue
            if record.get("undeleted"):  # Undo delete: the chat comes back
                undeleted.append(chat_id)
                record = {key: value for key, value in record.items() if key != "undeleted"}
            messages = record.get("messages")
            if isinstance(messages, list) and messages:
                rows.append(self._row(user, chat_id, record))  # the JSON is made before the lock is taken
            else:
                emptied.append(chat_id)  # an empty chat is not kept (no ghost chats in the list)
        with self._lock, self._db:
            deleted = self._deleted.setdefault(user, OrderedDict())
            for chat_id in undeleted:
                deleted.pop(chat_id, None)
            rows = [row for row in rows if row[1] not in deleted]  # a reply's save after its chat was deleted
            self._db.execute("BEGIN IMMEDIATE")
            self._check_room(user, rows)
            self._db.executemany("DELETE FROM chats WHERE user = ? AND id = ?", [(user, i) for i in emptied])
            self._db.executemany(
                "INSERT INTO chats (user, id, title, updated, size, search, record) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (user, id) DO UPDATE SET title = excluded.title, updated = excluded.updated, "
                "size = excluded.size, search = excluded.search, record = excluded.record",
                rows,
            )

    def get(self, user: str, chat_id: str) -> Record | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM chats WHERE user = ? AND id = ?", (user, chat_id)).fetchone()
        return json.loads(row[0]) if row else None

    def titles(self, user: str, query: str = "") -> list[tuple[str, str]]:
        """(title, id) of ``user``'s chats, newest first; ``query``: only those whose title or messages hold it."""
        needle = query.strip().lower()
        with self._lock:
            rows = self._db.execute(
                "SELECT title, id FROM chats WHERE user = ? AND (? = '' OR instr(search, ?) > 0) ORDER BY updated DESC",
                (user, needle, needle),
            ).fetchall()
        return [(title or "New chat", chat_id) for title, chat_id in rows]

    def records(self, user: str) -> list[Record]:
        with self._lock:
            rows = self._db.execute("SELECT record FROM chats WHERE user = ? ORDER BY updated DESC", (user,)).fetchall()
        return [json.loads(text) for (text,) in rows]

    def remove(self, user: str, chat_id: str) -> None:
        """Delete the chat; a save of it still on its way is ignored until Undo brings it back."""
        if not chat_id:
            return
        with self._lock:
            deleted = self._deleted.setdefault(user, OrderedDict())
            deleted[chat_id] = None
            while len(deleted) > TOMBSTONES:
                deleted.popitem(last=False)
            self._db.execute("DELETE FROM chats WHERE user = ? AND id = ?", (user, chat_id))

    def usage(self, user: str) -> tuple[int, int]:
        """(chats, bytes) ``user`` keeps."""
        with self._lock:
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM chats WHERE user = ?", (user,)
            ).fetchone()
        return int(count), int(size)

    # --- inside ---------------------------------------------------------------------------------------

    def _row(self, user: str, chat_id: str, record: Record) -> tuple[Any, ...]:
        text = json.dumps(record, ensure_ascii=False)
        size = len(text.encode("utf-8"))
        title = str(record.get("title") or "")
        if size > self.max_chat_bytes:
            name = f"The chat {title!r}" if title else "This chat"
            raise ChatbotError(
                f"{name} is {size_text(size)}; this server keeps chats of at most {size_text(self.max_chat_bytes)}.",
                fix="Start a new chat, or ask the server's operator for a larger --max-chat-mb.",
            )
        # What the search box matches, as the page's own search does: the title and the messages' text.
        shown = [str(m.get("content") or "") for m in record["messages"] if isinstance(m, dict)]
        search = "\n".join([title, *shown]).lower()
        return user, chat_id, title, float(record.get("updated") or 0.0), size, search, text

    def _check_room(self, user: str, rows: list[tuple[Any, ...]]) -> None:
        """Raise ``ChatbotError`` if writing ``rows`` would take ``user`` past the bounds (inside the transaction)."""
        if not rows:
            return
        ids = [row[1] for row in rows]
        marks = ",".join("?" * len(ids))
        others, other_bytes = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM chats WHERE user = ? AND id NOT IN ({marks})",
            (user, *ids),
        ).fetchone()
        count, size = others + len(rows), other_bytes + sum(row[4] for row in rows)
        fix = "Delete chats you no longer need (Export all keeps a copy of them first)."
        if count > self.max_chats:
            raise ChatbotError(
                f"Your chats on this server would number {count:,}; each login may keep {self.max_chats:,}.", fix=fix
            )
        if size > self.max_bytes:
            raise ChatbotError(
                f"Your chats on this server would take {size_text(size)}; each login may keep "
                f"{size_text(self.max_bytes)}.",
                fix=fix[:-1] + ", or ask the server's operator for a larger --chat-store-mb.",
            )


def size_text(size: int) -> str:
    """Bytes in words: "3.21 MB", or "12 KB" below a tenth of a megabyte."""
    return f"{size / 2**20:.3g} MB" if size >= 2**20 / 10 else f"{max(1, round(size / 1024))} KB"


def open_chat_store(settings: Settings) -> ChatStore | None:
    """The server's chat store when the settings keep chats there (``Settings.keeps_chats_on_server``), else None.

    Raises:
        ChatbotError: the store's file cannot be opened.
    """
    if not settings.keeps_chats_on_server():
        return None
    path = settings.chat_store_file or cache_dir() / STORE_FILE
    store = ChatStore(path, int(settings.chat_store_mb * 2**20), int(settings.max_chat_mb * 2**20))
    log.info("Web chats are kept on the server, one store per login, in %s", path)
    return store
