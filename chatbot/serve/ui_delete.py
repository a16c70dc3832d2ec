"""Deleting one message of a web chat (the 🗑 beside a message's copy button, as in llama.cpp's web UI and
LM Studio): the chat, its saved record and the context meter follow.

* A question or an answer without versions is taken out of the chat; the rest stays as it was.
* An answer's tool results go with it (a result without its call means nothing to the model).
* A message with versions (‹ 2 of 3 ›) loses the version shown, which is the message and the line that
  followed it then; the version before it comes back with its own line (``ui_versions``), so every other
  version stays reachable.

``delete_message(handlers)`` is the event's function (wired in ``ui.py``, /delete_message).
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from ..chat.conversation import Conversation
from ..errors import ChatbotError
from .ui_handlers import BUSY, ChatHandlers, as_text, info_html, notice_html, session_of
from .ui_render import conversation_messages, indexed_messages
from .ui_session import saved_form
from .ui_versions import restore_version, versions_before_change


def delete_turn(conversation: Conversation, index: int) -> str:
    """Delete turn ``index`` (see the module docstring); returns what was done, in words.

    Raises:
        ChatbotError: no such turn, or a saved version that is not a conversation.
    """
    if not 0 <= index < len(conversation.turns):
        raise ChatbotError("That message is no longer in the chat (it changed meanwhile?).")
    turn = conversation.turns[index]
    if len(turn.versions) > 1:
        versions = versions_before_change(conversation, index)
        del versions[turn.version]
        restore_version(conversation, index, versions, max(0, turn.version - 1))
        return f"Deleted that version; {len(versions)} left."
    end = index + 1
    calls = {str(call.get("id")) for call in turn.tool_calls if isinstance(call, dict)}
    while calls and end < len(conversation.turns) and conversation.turns[end].role == "tool":
        if conversation.turns[end].tool_call_id not in calls:
            break
        end += 1
    del conversation.turns[index:end]
    return ""


def delete_message(handlers: ChatHandlers):
    """The event's function: ``request_text`` is JSON {"index": the message's position in the chat as drawn}.
    Outputs: chat, conversation, record, notice."""

    def delete_one(
        request_text: str, conversation: Conversation, chat_id: str, title: str, request: gr.Request
    ) -> tuple[Any, ...]:
        try:
            asked = json.loads(request_text or "{}")
        except json.JSONDecodeError:
            asked = {}
        position = asked.get("index") if isinstance(asked, dict) else None
        drawn = indexed_messages(conversation)
        if not isinstance(position, int) or not 0 <= position < len(drawn):
            return gr.skip(), conversation, gr.skip(), notice_html("That message is no longer in the chat.")
        if handlers.stops.running(session_of(request)):
            return gr.skip(), conversation, gr.skip(), notice_html(BUSY)
        try:
            done = delete_turn(conversation, drawn[position][0])
        except ChatbotError as error:
            return gr.skip(), conversation, gr.skip(), notice_html(error)
        record = as_text(saved_form(conversation, chat_id, title))
        return conversation_messages(conversation), conversation, record, info_html(done) if done else ""

    delete_one.__name__ = "delete_message"
    return delete_one
