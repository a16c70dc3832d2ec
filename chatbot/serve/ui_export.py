"""The web chat's "Export all as Markdown": every chat in one Markdown file, each under its title.

The chats kept on the server (``--auth``) are read from the store; the chats a browser keeps are sent by
the page with the click (its own list, as "Export all" as JSON would download them). The file is
``chat_markdown.archive_to_markdown``'s; Import reads it back as one chat per title
(``chat_markdown.chats_from_markdown``). ``wire`` adds the event (``/export_all_markdown``).
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from .chat_markdown import archive_to_markdown
from .ui_handlers import ChatHandlers, export_file, from_text

ARCHIVE_NAME = "qwen3-chats.md"
# The page's chats (or "[]" when the server keeps them), newest first, as the click's input.
JS_PAGE_CHATS = "() => [JSON.stringify(qcStore.all())]"


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
