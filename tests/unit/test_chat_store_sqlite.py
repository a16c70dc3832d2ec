"""Chats kept on the server (``chatbot/serve/chat_store.py``) and their settings: one store per login, bounded,
kept across a restart; and the page's own copy standing behind the same four operations. Pure, a temp file.

.venv/bin/python -m pytest tests/unit/test_chat_store_sqlite.py -q
"""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from chatbot.errors import ChatbotError
from chatbot.serve.chat_store import ChatStore, PageChats, open_chat_store
from chatbot.settings import Settings

MB = 2**20


def chat(chat_id: str, *texts: str, title: str = "", updated: float = 1.0) -> dict:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    return {"format": "qwen3-chat-conversation", "id": chat_id, "title": title or texts[0], "updated": updated} | {
        "system_prompt": "",
        "messages": messages,
    }


@pytest.fixture
def store(tmp_path: Path) -> ChatStore:
    return ChatStore(tmp_path / "chats.sqlite3", max_bytes=MB, max_chat_bytes=MB // 4, max_chats=5)


def test_each_login_sees_its_own_chats_newest_first(store: ChatStore) -> None:
    alice, bob = store.user("alice"), store.user("bob")
    alice.save(chat("a1", "First question", updated=1.0))
    alice.save(chat("a2", "Second question", "An answer about Paris", updated=2.0))
    bob.save(chat("b1", "Bob's question"))
    assert alice.index({"query": ""}) == [("Second question", "a2"), ("First question", "a1")]
    assert bob.index(None) == [("Bob's question", "b1")]
    assert alice.load("a2")["messages"][1]["content"] == "An answer about Paris"
    assert bob.load("a2") is None and store.user("carol").index({"query": ""}) == []
    # The search box matches titles and message text, whatever the case, as the page's own search does.
    assert alice.index({"query": "PARIS"}) == [("Second question", "a2")]
    assert alice.index({"query": "nothing like it"}) == []
    assert [record["id"] for record in alice.all()] == ["a2", "a1"]


def test_a_save_replaces_the_chat_and_an_empty_one_is_removed(store: ChatStore) -> None:
    chats = store.user("alice")
    chats.save(chat("a1", "Question"))
    chats.save(chat("a1", "Question", "Answer", title="Renamed", updated=5.0))
    assert chats.index({}) == [("Renamed", "a1")] and len(chats.load("a1")["messages"]) == 2
    chats.save(chat("a1", "Question") | {"messages": []})  # undone to nothing: no empty chat in the list
    assert chats.index({}) == [] and chats.load("a1") is None
    chats.save({"format": "qwen3-chat-conversation", "system_prompt": "", "messages": []})  # a new tab's: no id
    assert store.usage("alice") == (0, 0)


def test_a_deleted_chat_stays_deleted_until_undo(store: ChatStore) -> None:
    chats = store.user("alice")
    chats.save(chat("a1", "Question"))
    chats.delete("a1")
    chats.save(chat("a1", "Question", "A reply's late save"))  # arriving after the delete
    assert chats.load("a1") is None
    chats.save(chat("a1", "Question") | {"undeleted": True})  # Undo delete
    assert chats.load("a1") is not None and "undeleted" not in chats.load("a1")


def test_the_store_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "chats.sqlite3"
    first = ChatStore(path, max_bytes=MB, max_chat_bytes=MB)
    first.user("alice").save(chat("a1", "Kept across restarts"))
    first.close()
    again = ChatStore(path, max_bytes=MB, max_chat_bytes=MB)
    assert again.user("alice").index({}) == [("Kept across restarts", "a1")]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_bounds_per_login_refuse_with_what_to_do(store: ChatStore) -> None:
    chats = store.user("alice")
    for i in range(5):
        chats.save(chat(f"c{i}", f"Question {i}"))
    with pytest.raises(ChatbotError, match="would number 6; each login may keep 5") as refused:
        chats.save(chat("c5", "One too many"))
    assert "Delete chats" in (refused.value.fix or "")
    chats.save(chat("c4", "Question 4", "An existing chat still grows"))  # not a new one
    assert store.user("bob").index({}) == []  # another login's room is its own
    store.user("bob").save(chat("b1", "Bob has room"))

    with pytest.raises(ChatbotError, match=r"is 0\.333 MB; this server keeps chats of at most 0\.25 MB"):
        chats.save(chat("c0", "x" * (MB // 3), title="big"))
    for i in range(4):
        chats.delete(f"c{i}")
    chats.save(chat("c0", "y" * (MB // 5), title="big") | {"undeleted": True})
    chats.save(chat("c1", "y" * (MB // 5), title="big") | {"undeleted": True})
    chats.save(chat("c2", "y" * (MB // 5), title="big") | {"undeleted": True})
    chats.save(chat("c3", "y" * (MB // 5), title="big") | {"undeleted": True})
    with pytest.raises(ChatbotError, match=r"would take 1 MB; each login may keep 1 MB") as full:
        chats.save(chat("c4", "y" * (MB // 5), title="big"))
    assert "--chat-store-mb" in (full.value.fix or "")


def test_an_import_that_does_not_fit_changes_nothing(store: ChatStore) -> None:
    chats = store.user("alice")
    chats.save(chat("kept", "Already here"))
    with pytest.raises(ChatbotError, match="would number 7"):
        chats.save_all([chat(f"new{i}", f"Imported {i}") for i in range(6)])
    assert chats.index({}) == [("Already here", "kept")]


def test_saves_from_many_threads_all_land(store: ChatStore) -> None:
    errors: list[Exception] = []

    def writer(user: str) -> None:
        try:
            for step in range(40):
                store.user(user).save(chat(f"{user}-{step % 3}", f"{user} {step}", updated=float(step)))
                store.user(user).index({"query": user})
        except Exception as exc:  # collected, and reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"user{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(store.usage(f"user{i}")[0] == 3 for i in range(4))


def test_the_page_keeps_its_own_chats() -> None:
    page = PageChats()
    sent = chat("p1", "In the browser")
    assert page.load("p1", sent) == sent and page.load("other", sent) is None and page.load("p1", None) is None
    assert page.index([["In the browser", "p1"], "junk"]) == [("In the browser", "p1")]
    assert page.all() is None
    page.save(sent)  # the page writes what the handlers send out: nothing to do here
    page.delete("p1")


def test_settings_choose_where_chats_are_kept(tmp_path: Path) -> None:
    assert not Settings().keeps_chats_on_server()
    assert Settings(auth="alice:pw").keeps_chats_on_server()
    assert not Settings(auth="alice:pw", chat_store="browser").keeps_chats_on_server()
    with pytest.raises(ValidationError, match="one store per login: give --auth"):
        Settings(chat_store="server")
    logins = tmp_path / "logins"
    logins.write_text("alice:pw1\n\nbob:pw:with:colons\n", encoding="utf-8")
    settings = Settings(auth_file=logins, chat_store_file=tmp_path / "store.sqlite3")
    assert settings.auth_pairs() == [("alice", "pw1"), ("bob", "pw:with:colons")]
    assert settings.auth_pair() == ("alice", "pw1")
    logins.write_text("alice:pw1\nbob-without-password\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="one user:password a line"):
        Settings(auth_file=logins)
    store = open_chat_store(settings)
    assert store is not None and store.path == tmp_path / "store.sqlite3"
    assert open_chat_store(Settings()) is None


def test_a_store_that_cannot_be_opened_says_which_file_and_what_to_do(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("", encoding="utf-8")
    with pytest.raises(ChatbotError, match="cannot be opened") as refused:
        ChatStore(blocked / "chats.sqlite3", max_bytes=MB, max_chat_bytes=MB)
    assert "--chat-store-file" in (refused.value.fix or "")


def test_a_session_without_a_chat_id_of_its_own_keeps_its_chat_apart(store: ChatStore) -> None:
    # Sessions that never loaded the page share the id every session starts with: each is kept under its own.
    first, second = store.user("alice", {"start": "start-s1"}), store.user("alice", {"start": "start-s2"})
    first.save(chat("start", "From session one"))
    second.save(chat("start", "From session two"))
    assert sorted(store.titles("alice")) == [("From session one", "start-s1"), ("From session two", "start-s2")]
    assert first.load("start")["messages"][0]["content"] == "From session one"
    second.delete("start")
    assert store.titles("alice") == [("From session one", "start-s1")]
