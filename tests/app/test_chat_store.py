"""Chats kept on the server with ``--auth``: the running app through ``gradio_client``, as two devices would use it.

.venv/bin/python -m pytest tests/app/test_chat_store.py -q

The app runs the scripted model behind an auth file with two logins. Two sessions of one login (a phone
and a laptop) see the same chats, the other login sees none of them, a restart keeps them all, and a
login past its share of the store is refused with a message saying what to do; the chats also go out and
come back in as Markdown.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from helpers.app import RunningApp, running_app

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING
from chatbot.serve.chat_markdown import chats_from_markdown, from_markdown

ALICE = ("alice", "alice-pw")
BOB = ("bob", "bob-pw")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app's log and its chat store (tests/helpers/app.py puts the store beside the log)."""
    folder = tmp_path_factory.mktemp("chat-store")
    (folder / "logins").write_text(f"{':'.join(ALICE)}\n{':'.join(BOB)}\n", encoding="utf-8")
    return folder


def start(scripted_fp8: Path, folder: Path, *extra: str):
    args = ["--model", str(scripted_fp8), "--auth-file", str(folder / "logins"), *extra]
    return running_app(args, folder / "app.log", api=False)


@pytest.fixture(scope="module")
def app(scripted_fp8: Path, folder: Path) -> Iterator[RunningApp]:
    with start(scripted_fp8, folder) as app:
        yield app


def kept_chats(client: Client) -> list[dict]:
    """Every chat the client's login keeps on the server ("Export all")."""
    archive = json.loads(Path(client.predict(api_name="/export_all")).read_text(encoding="utf-8"))
    assert archive["format"] == "qwen3-chat-archive"
    return archive["chats"]


def test_two_sessions_of_one_login_share_its_chats_and_another_login_sees_none(app: RunningApp) -> None:
    laptop, phone = Client(app.ui_url, auth=ALICE, verbose=False), Client(app.ui_url, auth=ALICE, verbose=False)
    _, _, notice, _ = laptop.predict(message="Written on the laptop", enable_thinking=True, api_name="/chat")
    assert notice == ""
    [kept] = [chat for chat in kept_chats(phone) if chat["title"] == "Written on the laptop"]
    assert kept["title"] == "Written on the laptop"
    assert [m["content"] for m in kept["messages"]] == ["Written on the laptop", SCRIPTED_ANSWER]
    assert kept["messages"][1]["thinking"] == SCRIPTED_THINKING

    bob = Client(app.ui_url, auth=BOB, verbose=False)
    assert kept_chats(bob) == []
    bob.predict(message="Bob's own", enable_thinking=False, api_name="/chat")
    assert [chat["title"] for chat in kept_chats(bob)] == ["Bob's own"]
    assert "Bob's own" not in {chat["title"] for chat in kept_chats(phone)}

    # Each session's chat is its own (neither overwrites the other); deleted on one device, gone on the other.
    phone.predict(message="Written on the phone", enable_thinking=False, api_name="/chat")
    assert {"Written on the laptop", "Written on the phone"} <= {chat["title"] for chat in kept_chats(laptop)}
    phone.predict(api_name="/clear")
    assert "Written on the phone" not in {chat["title"] for chat in kept_chats(laptop)}
    _, new_id, _, _ = laptop.predict(api_name="/new_chat")  # a program passes the chat's id with each message
    laptop.predict(message="A new chat on the laptop", chat_id=new_id, enable_thinking=False, api_name="/chat")
    assert {"Written on the laptop", "A new chat on the laptop"} <= {chat["title"] for chat in kept_chats(phone)}


def test_markdown_export_reads_well_and_imports_back_into_the_store(app: RunningApp, tmp_path: Path) -> None:
    writer, reader = Client(app.ui_url, auth=ALICE, verbose=False), Client(app.ui_url, auth=ALICE, verbose=False)
    writer.predict(message="Markdown, please", enable_thinking=True, system_prompt="Answer briefly.", api_name="/chat")
    text = Path(writer.predict(api_name="/export_markdown")).read_text(encoding="utf-8")
    assert "# Markdown, please" in text and "### You\n\nMarkdown, please" in text
    assert f"<summary>Thinking</summary>\n\n{SCRIPTED_THINKING}" in text and SCRIPTED_ANSWER in text
    exported = json.loads(Path(writer.predict(api_name="/export_conversation")).read_text(encoding="utf-8"))
    assert from_markdown(text)["messages"] == exported["messages"]

    saved = tmp_path / "chat.md"
    saved.write_text(text, encoding="utf-8")
    _, notice, system_prompt, new_id, record, _ = reader.predict(
        handle_file(str(saved)), api_name="/import_conversation"
    )
    assert notice == "" and system_prompt == "Answer briefly." and new_id != exported["id"]
    assert json.loads(record)["messages"] == exported["messages"]
    assert new_id in {chat["id"] for chat in kept_chats(writer)}  # imported into the login's store

    elsewhere = tmp_path / "notes.md"
    elsewhere.write_text("# My notes\n\nNot a chat.\n", encoding="utf-8")
    _, notice, *_ = reader.predict(handle_file(str(elsewhere)), api_name="/import_conversation")
    assert "no chat exported by Qwen3 Chat" in html.unescape(notice)


def test_every_chat_as_one_markdown_file_imports_back_as_separate_chats(app: RunningApp, tmp_path: Path) -> None:
    writer = Client(app.ui_url, auth=BOB, verbose=False)
    for question in ("First of all", "Second of all"):
        _, new_id, _, _ = writer.predict(api_name="/new_chat")
        writer.predict(message=question, chat_id=new_id, enable_thinking=True, api_name="/chat")
    kept = kept_chats(writer)
    text = Path(writer.predict(api_name="/export_all_markdown")).read_text(encoding="utf-8")
    assert "# First of all\n" in text and "# Second of all\n" in text  # each chat under its title
    assert [chat["messages"] for chat in chats_from_markdown(text)] == [chat["messages"] for chat in kept]

    saved = tmp_path / "all.md"
    saved.write_text(text, encoding="utf-8")
    reader = Client(app.ui_url, auth=ALICE, verbose=False)  # another login: its store gets copies
    before = {chat["id"] for chat in kept_chats(reader)}
    _, notice, *_ = reader.predict(handle_file(str(saved)), api_name="/import_conversation")
    assert f"Imported {len(kept)} chats." in notice
    imported = [chat for chat in kept_chats(reader) if chat["id"] not in before]
    assert sorted((chat["title"], json.dumps(chat["messages"])) for chat in imported) == sorted(
        (chat["title"], json.dumps(chat["messages"])) for chat in kept
    )


def test_a_restart_keeps_every_chat_and_a_full_share_is_refused_saying_why(
    app: RunningApp, scripted_fp8: Path, folder: Path
) -> None:
    alice = Client(app.ui_url, auth=ALICE, verbose=False)
    alice.predict(message="Before the restart", enable_thinking=False, api_name="/chat")
    bob = Client(app.ui_url, auth=BOB, verbose=False)
    bob.predict(message="Bob's, before the restart", enable_thinking=False, api_name="/chat")
    before = {chat["id"]: chat for chat in kept_chats(alice)}
    bob_before = kept_chats(bob)
    app.process.terminate()
    app.process.wait(timeout=60)

    # Back with a share so small that the chats already kept fill it: they are all there, nothing new fits.
    with start(scripted_fp8, folder, "--chat-store-mb", "0.001") as again:
        alice = Client(again.ui_url, auth=ALICE, verbose=False)
        assert {chat["id"]: chat for chat in kept_chats(alice)} == before
        assert kept_chats(Client(again.ui_url, auth=BOB, verbose=False)) == bob_before
        _, box, notice, _ = alice.predict(message="One more", enable_thinking=False, api_name="/chat")
        notice = html.unescape(notice)
        assert "each login may keep 1 KB" in notice and "Delete chats" in notice and "--chat-store-mb" in notice
        assert box == "One more"  # the message stays in the box
        assert {chat["id"] for chat in kept_chats(alice)} == set(before)
