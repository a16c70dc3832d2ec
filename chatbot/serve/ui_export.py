"""The web chat's Export and Import: one chat as JSON or Markdown, every chat as one file, and back.

* Export (``/export_conversation``, ``/export_markdown``): the chat shown, as saved (``saved_form``) or as
  Markdown (``chat_markdown.to_markdown``).
* "Export all" (``/export_all``): the chats kept on the server (``--auth``) as one JSON archive; a browser
  that keeps the chats exports its own (the page's script), so the server sends nothing then.
* "Export all as Markdown" (``/export_all_markdown``): every chat in one Markdown file, each under its
  title. The chats kept on the server are read from the store; the chats a browser keeps are sent by the
  page with the click. ``wire`` adds this event.
* Import (``/import_conversation``): a file of any of these, opened as new chats (Markdown is read back
  by ``chat_markdown.chats_from_markdown``, one chat per title); the uploaded file is deleted once read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from ..chat.conversation import Conversation
from ..errors import ChatbotError
from .chat_markdown import archive_to_markdown, chats_from_markdown, looks_like_markdown, to_markdown
from .ui_handlers import ARCHIVE_FORMAT, ChatHandlers, as_text, export_file, from_text, info_html, notice_html
from .ui_render import conversation_messages
from .ui_session import check_chat_size, from_saved_form, new_chat_id, saved_form
from .uploads import discard_upload

ARCHIVE_NAME = "qwen3-chats.md"
# The page's chats (or "[]" when the server keeps them), newest first, as the click's input.
JS_PAGE_CHATS = "() => [JSON.stringify(qcStore.all())]"


def export_conversation(conversation: Conversation, chat_id: str, title: str) -> str:
    """Write the conversation to a JSON file and return its path (the page downloads it)."""
    data = saved_form(conversation, chat_id, title)
    return export_file("conversation.json", json.dumps(data, ensure_ascii=False, indent=2))


def export_markdown(conversation: Conversation, chat_id: str, title: str) -> str:
    """Write the conversation as Markdown (``chat_markdown``) and return its path (the page downloads it)."""
    return export_file("conversation.md", to_markdown(saved_form(conversation, chat_id, title)))


def export_all(handlers: ChatHandlers):
    """The event's function: "Export all" of the chats kept on the server, as a JSON archive file (None: the
    page exports its own)."""

    def export_all(request: gr.Request) -> str | None:
        records = handlers.chats(request).all()
        if records is None:
            return None
        return export_file(
            "qwen3-chats.json", json.dumps({"format": ARCHIVE_FORMAT, "chats": records}, ensure_ascii=False)
        )

    return export_all


def import_conversation(handlers: ChatHandlers):
    """The event's function: open an exported chat (JSON or Markdown, or every chat of an "Export all" file) as
    new chats, deleting the uploaded file once it has been read (the chats are then saved).

    Its outputs: chat, notice, system prompt, conversation, chat id, title, record, all imported records.
    """

    def import_conversation(file: str | None, system_prompt: str, request: gr.Request) -> tuple[Any, ...]:
        try:
            return opened_chats(handlers, file, system_prompt, request)
        finally:
            discard_upload(file)

    return import_conversation


def opened_chats(handlers: ChatHandlers, file: str | None, system_prompt: str, request: gr.Request) -> tuple[Any, ...]:
    unchanged = (gr.skip(),) * 5
    if not file:
        return gr.skip(), notice_html("Choose a .json or .md file to import."), *unchanged, gr.skip()
    try:
        text = Path(file).read_text(encoding="utf-8")
        if looks_like_markdown(file):  # one chat, or every chat of "Export all as Markdown"
            found = chats_from_markdown(text)
            data = found[0] if len(found) == 1 else {"format": ARCHIVE_FORMAT, "chats": found}
        else:
            data = json.loads(text)
        items = data["chats"] if isinstance(data, dict) and data.get("format") == ARCHIVE_FORMAT else [data]
        for item in items:  # each chat is held by the server when opened: none may be over the limit
            check_chat_size(item, handlers.app.settings.max_chat_mb)
        opened = [from_saved_form(item, system_prompt.strip()) for item in items]
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        error = ChatbotError(f"The file is not valid JSON ({exc}).", fix="Import a file made by Export.")
        return gr.skip(), notice_html(error), *unchanged, gr.skip()
    except (ChatbotError, KeyError, TypeError) as exc:
        error = exc if isinstance(exc, ChatbotError) else ChatbotError(f"The file is not a chat archive ({exc}).")
        return gr.skip(), notice_html(error), *unchanged, gr.skip()
    if not opened:
        return gr.skip(), notice_html("The file holds no chats."), *unchanged, gr.skip()
    titles = [str(item.get("title") or "") if isinstance(item, dict) else "" for item in items]
    records = [saved_form(chat, new_chat_id(), title) for chat, title in zip(opened, titles, strict=True)]
    chats = handlers.chats(request)
    try:
        chats.save_all(records)  # all of them or none
    except ChatbotError as error:
        return gr.skip(), notice_html(error), *unchanged, gr.skip()
    first = opened[0]
    note = info_html(f"Imported {len(records)} chats.") if len(records) > 1 else ""
    return (
        conversation_messages(first),
        note,
        first.system_prompt,
        first,
        records[0]["id"],
        records[0]["title"],
        as_text(records[0]),
        as_text(records),
    )


def page_records(sent: Any) -> list[dict[str, Any]]:
    """The saved chats in what the page sent (a JSON list of records); anything that is not one is left out."""
    items = sent if isinstance(sent, list) else []
    return [item for item in items if isinstance(item, dict) and isinstance(item.get("messages"), list)]


def export_all_markdown(handlers: ChatHandlers):
    """The event's function: (the page's chats as JSON) -> the path of the Markdown file (the page downloads it)."""

    def export_all_markdown(page_chats: str, request: gr.Request) -> str:
        kept = handlers.chats(request).all()
        records = kept if kept is not None else page_records(from_text(page_chats))
        records = [record for record in records if record.get("messages")]  # an empty chat is never kept
        return export_file(ARCHIVE_NAME, archive_to_markdown(records) if records else "# No chats yet\n")

    return export_all_markdown


def wire(handlers: ChatHandlers, button: gr.Button, export_file: gr.File) -> None:
    """The button's event: the file made on the server, then downloaded by the page with one click."""
    page_chats = gr.Textbox(json.dumps([]), visible="hidden")
    button.click(
        export_all_markdown(handlers), page_chats, export_file, js=JS_PAGE_CHATS, api_name="export_all_markdown"
    ).then(None, export_file, None, js="(file) => { qcStore.downloadFile(file); }", api_visibility="private")
