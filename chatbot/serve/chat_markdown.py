"""A saved chat as Markdown a person can read, and back: the web chat's "Export .md" and its import.

The file reads as a conversation (a heading per message, the thinking in a collapsed ``<details>``
block) and carries, in HTML comments no Markdown viewer shows, what it takes to import it again exactly:
one marker line before each message, with what is not text (stats, earlier versions, tool calls) as
JSON. A message line that looks like a marker gets one more leading space on the way out and loses it on
the way in, so any text round-trips::

    <!-- qwen3-chat-conversation {"title": "Primes", "id": "9f3c..."} -->
    # Primes

    <!-- qwen3-chat:user -->
    ### You

    Is 91 prime?

    <!-- qwen3-chat:assistant {"stats": {"new_tokens": 12}} -->
    ### Qwen3

    <details>
    <summary>Thinking</summary>

    91 = 7 × 13.

    </details>

    <!-- qwen3-chat:answer -->
    No: 91 = 7 × 13.

Plain Python; ``to_markdown`` takes and ``from_markdown`` gives a ``ui_session.saved_form`` record.

"Export all as Markdown" writes every chat into one file, each as ``to_markdown`` writes it (its first line
and its title as a ``#`` heading), one after the other; ``chats_from_markdown`` splits such a file at those
first lines, so Import brings each back as a chat of its own (a file of one chat gives one).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import ChatbotError

Record = dict[str, Any]
HEAD = "<!-- qwen3-chat-conversation"
LABELS = {"system": "System prompt", "user": "You", "assistant": "Qwen3", "tool": "Tool result"}
THINKING_OPEN = "<details>\n<summary>Thinking</summary>\n\n"
THINKING_CLOSE = "\n\n</details>\n\n"
ANSWER = "<!-- qwen3-chat:answer -->\n"
ANSWER_LINE = re.compile(r"^<!-- qwen3-chat:answer -->\n", re.MULTILINE)
# A marker is a whole line at the start of a line; the same text indented (escaped message text) is not one.
MARKER = re.compile(r"^<!-- qwen3-chat:(system|user|assistant|tool)(?: (\{.*\}))? -->\n", re.MULTILINE)
HEAD_LINE = re.compile(r"^<!-- qwen3-chat-conversation(?: (\{.*\}))? -->$", re.MULTILINE)
LOOKS_LIKE_MARKER = re.compile(r"^( *)(<!-- qwen3-chat)", re.MULTILINE)
ESCAPED_MARKER = re.compile(r"^ ( *<!-- qwen3-chat)", re.MULTILINE)
FIX = "Import a .md or .json file made by Export."


def to_markdown(record: Record) -> str:
    """``record`` (a saved chat) as Markdown; ``from_markdown`` gives it back."""
    title = str(record.get("title") or "") or "Chat"
    head = {key: record[key] for key in ("title", "id", "updated") if record.get(key)}
    parts = [f"{HEAD} {_comment_json(head)} -->\n# {_one_line(title)}\n\n"]
    system_prompt = record.get("system_prompt") or ""
    if system_prompt:
        parts.append(_section("system", {}, _escape(system_prompt)))
    for message in record.get("messages") or []:
        role = message.get("role")
        extra = {key: value for key, value in message.items() if key not in ("role", "content", "thinking")}
        content = _escape(str(message.get("content") or ""))
        if role == "assistant":
            thinking = str(message.get("thinking") or "")
            shown = f"{THINKING_OPEN}{_escape(thinking)}{THINKING_CLOSE}" if thinking else ""
            parts.append(_section("assistant", extra, f"{shown}{ANSWER}{content}"))
        else:
            parts.append(_section(str(role), extra, content))
    return "".join(parts)


def from_markdown(text: str) -> Record:
    """The saved chat a ``to_markdown`` file holds (its text as edited, if it was).

    Raises:
        ChatbotError: the text has no message markers (not exported by this app), or a marker's JSON is broken.
    """
    text = text.replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    markers = list(MARKER.finditer(text))
    if not markers:
        raise ChatbotError("This Markdown file holds no chat exported by Qwen3 Chat (no message markers).", fix=FIX)
    record: Record = {"format": "qwen3-chat-conversation"}
    head = HEAD_LINE.search(text, 0, markers[0].start())
    if head is not None and head.group(1):
        meta = _parse_json(head.group(1), "the file's first line")
        record |= {key: meta[key] for key in ("title", "id", "updated") if key in meta}
    record["system_prompt"] = ""
    messages: list[Record] = []
    for marker, following in zip(markers, [*markers[1:], None], strict=True):
        role, meta_text = marker.group(1), marker.group(2)
        body = text[marker.end() : following.start() if following else len(text)]
        body = _strip_label(body, role)
        if role == "system":
            record["system_prompt"] = _unescape(body)
            continue
        message: Record = {"role": role}
        if role == "assistant":
            found = ANSWER_LINE.search(body)
            # Without its answer marker (edited away), all of it is the answer.
            before, answer = (body[: found.start()], body[found.end() :]) if found else ("", body)
            message["content"] = _unescape(answer)
            thinking = before.removeprefix(THINKING_OPEN)
            thinking = thinking[: -len(THINKING_CLOSE)] if thinking.endswith(THINKING_CLOSE) else ""
            message["thinking"] = _unescape(thinking)
        else:
            message["content"] = _unescape(body)
        if meta_text:
            meta = _parse_json(meta_text, f"message {len(messages) + 1}'s marker")
            message |= {key: value for key, value in meta.items() if key not in ("role", "content", "thinking")}
        messages.append(message)
    record["messages"] = messages
    return record


def archive_to_markdown(records: list[Record]) -> str:
    """Every chat of ``records`` (saved chats, newest first) in one Markdown file, each under its title;
    ``chats_from_markdown`` gives them back."""
    return "".join(to_markdown(record) for record in records)


def chats_from_markdown(text: str) -> list[Record]:
    """The saved chats a file holds: one for a ``to_markdown`` file, each chat of an ``archive_to_markdown`` one.

    A chat starts at its first line (``<!-- qwen3-chat-conversation ... -->``); text of a message that looks
    like one was escaped on the way out (as a message marker is), so only a chat's own first line splits.

    Raises:
        ChatbotError: a part holds no message markers, or a marker's JSON is broken (as ``from_markdown``).
    """
    text = text.replace("\r\n", "\n")
    starts = [found.start() for found in HEAD_LINE.finditer(text)][1:]  # whatever precedes the first is its chat's
    bounds = zip([0, *starts], [*starts, len(text)], strict=True)
    return [from_markdown(text[start:end]) for start, end in bounds]


def looks_like_markdown(name: str) -> bool:
    return name.lower().endswith((".md", ".markdown"))


def _section(role: str, extra: Record, body: str) -> str:
    marker = f"<!-- qwen3-chat:{role} {_comment_json(extra)} -->" if extra else f"<!-- qwen3-chat:{role} -->"
    return f"{marker}\n### {LABELS.get(role, role)}\n\n{body}\n\n"


def _strip_label(body: str, role: str) -> str:
    """A section's text without its heading and the blank line that ends it (as ``_section`` wrote them)."""
    label = f"### {LABELS.get(role, role)}\n\n"
    body = body.removeprefix(label)
    return body[:-2] if body.endswith("\n\n") else body.removesuffix("\n")


def _comment_json(data: Record) -> str:
    """JSON on one line that cannot end the HTML comment it sits in ("-->" only occurs inside strings)."""
    return json.dumps(data, ensure_ascii=False).replace("-->", "--\\u003e")


def _parse_json(text: str, where: str) -> Record:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChatbotError(f"The JSON in {where} is broken ({exc}).", fix=FIX) from None
    if not isinstance(data, dict):
        raise ChatbotError(f"The JSON in {where} is not an object.", fix=FIX)
    return data


def _escape(text: str) -> str:
    return LOOKS_LIKE_MARKER.sub(r" \1\2", text)


def _unescape(text: str) -> str:
    return ESCAPED_MARKER.sub(r"\1", text)


def _one_line(text: str) -> str:
    return " ".join(text.split())
