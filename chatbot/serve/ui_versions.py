"""Versions of a chat's messages: editing any question or answering one again keeps what was there.

A chat is a line of turns, but each turn may have been written several ways: a question edited
after the fact, an answer regenerated. Each such turn keeps its **versions**, oldest first; a
version is the turn as it was plus everything that followed it then::

    {"content": "...", "thinking": "...", "stats": {...}, "after": [saved message, ...]}

so flipping back to version 1 of an edited question brings back the answer it had, and the rest
of that branch (whose own turns may have versions in turn). Only the version shown is part of the
line re-sent to the model. Saved and exported chats carry the versions as written here; the shown
version's ``after`` is left empty there (it is the line itself). Older saved chats, whose answers
kept versions without ``after``, load unchanged.

Edit last (or ↑) takes the last exchange out of the chat without saving the chat (``hold_pending_edit``):
the question sent next becomes that question's new version (``take_pending_edit``), and the page keeps a
marker of it (``edit_marker``) so that a reload before sending goes on with the edit (``resume_pending_edit``).

Plain Python over ``chatbot.chat.reply.Conversation``; no Gradio.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

from ..chat.reply import Conversation, Turn
from ..errors import ChatbotError

Record = dict[str, Any]
EXPORT_FIX = "Import a file made by Export."


def turn_record(turn: Turn) -> Record:
    """A turn as saved (browser storage, export): role, content, tool calls, thinking, stats, versions."""
    item: Record = turn.message()
    if turn.role == "assistant":
        item["thinking"] = turn.thinking
        if turn.stats:
            item["stats"] = turn.stats
    if len(turn.versions) > 1:
        shown = version_of(turn)  # the line after the shown version is the chat itself: not stored twice
        item["versions"] = [shown if i == turn.version else v for i, v in enumerate(turn.versions)]
        item["version"] = turn.version
    return item


def version_of(turn: Turn, after: list[Record] | None = None) -> Record:
    """``turn`` as one of its versions, followed by ``after`` (saved messages)."""
    version: Record = {"content": turn.content}
    if turn.role == "assistant":
        version |= {"thinking": turn.thinking, "stats": turn.stats}
    if turn.tool_calls:
        version["tool_calls"] = turn.tool_calls
    return version | {"after": after or []}


def snapshot(conversation: Conversation, index: int) -> Record:
    """Turn ``index`` and everything after it, as a version of that turn."""
    return version_of(conversation.turns[index], [turn_record(t) for t in conversation.turns[index + 1 :]])


def versions_before_change(conversation: Conversation, index: int) -> list[Record]:
    """The versions turn ``index`` has, the shown one brought up to date: call before replacing the turn."""
    turn = conversation.turns[index]
    versions = list(turn.versions) or [{}]
    versions[turn.version if turn.versions else 0] = snapshot(conversation, index)
    return versions


def add_version(turn: Turn, versions: list[Record]) -> None:
    """``turn`` is a new version of a turn that had ``versions`` (from ``versions_before_change``)."""
    turn.versions = [*versions, version_of(turn)]
    turn.version = len(turn.versions) - 1


def show_version(conversation: Conversation, index: int, chosen: int) -> None:
    """Show version ``chosen`` of turn ``index``: that turn and the line that followed it come back.

    Raises:
        ChatbotError: no such turn or version, or the version's saved line is not a conversation.
    """
    if not 0 <= index < len(conversation.turns) or not 0 <= chosen < len(conversation.turns[index].versions):
        raise ChatbotError("That message has no such version (the chat changed meanwhile?).")
    restore_version(conversation, index, versions_before_change(conversation, index), chosen)


def restore_version(conversation: Conversation, index: int, versions: list[Record], chosen: int) -> None:
    """Turn ``index`` becomes ``versions[chosen]``, followed by the line that followed it then; it keeps
    ``versions`` (none when one is left: a single version is no choice).

    Raises:
        ChatbotError: the version's saved line is not a conversation.
    """
    version = versions[chosen]
    after = turns_from_records(version.get("after") or [])
    kept = versions if len(versions) > 1 else []
    shown = replace(
        conversation.turns[index],
        content=version["content"],
        thinking=version.get("thinking") or "",
        stats=dict(version.get("stats") or {}),
        tool_calls=list(version.get("tool_calls") or []),
        versions=kept,
        version=chosen if kept else 0,
    )
    conversation.turns[index:] = [shown, *after]


def turns_from_records(items: list[Any]) -> list[Turn]:
    """Turns from saved messages (``turn_record`` output), versions included.

    Raises:
        ChatbotError: an item is not a message.
    """
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ChatbotError("A saved version's messages are not a list of messages.", fix=EXPORT_FIX)
    turns = Conversation.from_list(items).turns
    for item, turn in zip(items, turns, strict=True):
        stats = item.get("stats")
        if turn.role == "assistant" and isinstance(stats, dict):
            turn.stats = stats
        attach_versions(turn, item.get("versions"), item.get("version", 0))
    return turns


def attach_versions(turn: Turn, versions: Any, version: Any) -> None:
    """Give ``turn`` the saved ``versions`` when they are well formed (others are left out: an old or
    hand-edited file still opens, with the version it shows).

    Raises:
        ChatbotError: a version's ``after`` line is not a conversation.
    """
    if not isinstance(versions, list) or len(versions) < 2:
        return
    if not all(isinstance(v, dict) and isinstance(v.get("content"), str) for v in versions):
        return
    for v in versions:
        turns_from_records(v.get("after") or [])  # check every branch now, not when it is opened
    turn.versions = list(versions)
    turn.version = version if isinstance(version, int) and 0 <= version < len(versions) else 0
    turn.versions[turn.version] = version_of(turn)


def version_nav(conversation: Conversation) -> dict[int, int]:
    """Which assistant turn's line shows the versions of which turn: {turn with versions: turn showing them}.

    An answer shows its own; a question's are shown under the answer that follows it.
    """
    shown: dict[int, int] = {}
    for index, turn in enumerate(conversation.turns):
        if len(turn.versions) > 1:
            follows = index + 1 if turn.role == "user" and index + 1 < len(conversation.turns) else index
            shown[index] = follows
    return shown


# --- what an edit takes out, and Edit last waiting to be sent --------------------------------------------


def last_question(conversation: Conversation) -> int | None:
    """The index of the last user turn, or None."""
    return next((i for i in range(len(conversation.turns) - 1, -1, -1) if conversation.turns[i].role == "user"), None)


@dataclass
class Branch:
    """What an edit or a regeneration takes out of the chat: the turns from the changed one on, and the
    changed turn's versions (role "user": an edited question; "assistant": an answer given again)."""

    role: str
    versions: list[dict[str, Any]]
    removed: list[Turn]


def hold_pending_edit(conversation: Conversation, index: int) -> None:
    """Edit last (or ↑) takes question ``index`` and what followed it out of the chat: kept with the chat
    (server side, this tab only), the question sent next becomes its new version, as the pencil's edit does."""
    branch = Branch("user", versions_before_change(conversation, index), conversation.turns[index:])
    conversation.pending_edit = (branch, conversation.to_list()[:index])  # type: ignore[attr-defined]


def edit_marker(chat_id: str, index: int, question: str) -> str:
    """What the page keeps in the tab while an Edit last is not sent yet: which chat, which question."""
    # "at" makes each marker new to the page, so that its change event always fires
    return json.dumps({"id": chat_id, "index": index, "question": question, "at": time.time()}, ensure_ascii=False)


def resume_pending_edit(conversation: Conversation, chat_id: str, marker: str) -> bool:
    """After a reload: take the exchange out again if the tab's marker names this chat's last question, as Edit
    last did before the reload (the chat was not saved without it). Returns whether it did."""
    try:
        held = json.loads(marker) if marker else None
    except json.JSONDecodeError:
        return False
    if not isinstance(held, dict) or held.get("id") != chat_id or not isinstance(held.get("index"), int):
        return False
    index = held["index"]
    if index != last_question(conversation) or conversation.turns[index].content != held.get("question"):
        return False  # the chat changed since (sent, undone, edited elsewhere): nothing to resume
    hold_pending_edit(conversation, index)
    del conversation.turns[index:]
    return True


def take_pending_edit(conversation: Conversation) -> Branch | None:
    """The branch Edit last took out, if the chat is still as it left it (not undone, switched or cleared)."""
    pending = getattr(conversation, "pending_edit", None)
    conversation.pending_edit = None  # type: ignore[attr-defined]  # one message uses it, or it is stale
    if pending is None:
        return None
    branch, before = pending
    return branch if conversation.to_list() == before else None
