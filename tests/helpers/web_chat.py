"""Reading the web chat's chat value as ``gradio_client`` returns it (a list of message dicts)."""

from __future__ import annotations

import html
import re
from typing import Any

from chatbot.serve.ui_render import is_stats_message


def text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, list):  # gradio_client gives [{"type": "text", "text": ...}]
        return "".join(part.get("text", "") for part in content)
    return content


def reply_parts(chat: list[dict[str, Any]]) -> dict[str, Any]:
    """The last reply of a chat value: its question's text, its thinking message (the dict, None without
    one), its answer text and its stats line (tags taken out, entities decoded; None without one)."""
    last_user = max(i for i, message in enumerate(chat) if message["role"] == "user")
    parts: dict[str, Any] = {"user": text_of(chat[last_user]), "thinking": None, "answer": None, "stats": None}
    for message in chat[last_user + 1 :]:
        if (message.get("metadata") or {}).get("title"):
            parts["thinking"] = message
        elif is_stats_message(message):
            parts["stats"] = html.unescape(re.sub(r"<[^>]+>", "", text_of(message)))
        else:
            parts["answer"] = text_of(message)
    return parts


def last_reply(chat: list[dict[str, Any]]) -> dict[str, str]:
    """The last reply's thinking, answer and stats line as text ("" for what it lacks)."""
    parts = reply_parts(chat)
    thinking = parts["thinking"]
    return {
        "thinking": text_of(thinking) if thinking else "",
        "answer": parts["answer"] or "",
        "stats": parts["stats"] or "",
    }
