"""Files attached to a web chat message, on the page: the paperclip button, the chips above the message box, the send.

A file dropped on the page, pasted into the message box (``assets/attach.js`` hands both to the paperclip
button) or picked with it is uploaded (bounded by ``uploads.UploadQuota``), read at once as text
by ``attachments.read_attachment`` and deleted; its text waits, server side, in the tab's ``gr.State``
until the message is sent, shown as a chip (name, size, ×) above the box. Send writes the files into the
message (``attachments.compose``); the files are let go once the server has stored the message (when
it empties the box), and stay attached, with the typed text back in the box, when the message is refused
(too long for the context, a reply still running). "Edit last" (or ↑) takes a message's files back into
the chips.

The page keeps the waiting files too, beside the unsent text (the tab's sessionStorage, ``assets/attach.js``),
so a reload, or the server restarting (the page reloads once it is back), loses none: on load the page hands
them back and they are chips again. The server takes them back as it takes typed text, within the same
bounds as files attached (``MAX_ATTACHED``, the characters a chat holds). A file too large for the
browser's storage is kept by name only, and the page says so, when attached and again after a reload.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..errors import ChatbotError
from .attachments import Attachment, attachments_of, compose, describe_size, read_attachment, split
from .uploads import discard_upload

MAX_ATTACHED = 8  # files waiting on one message
FILES_COUNT = "The attached files are part of the message: take one off with its ×, or attach a part of it."
JS_DETACH = "(request, ...rest) => [window.qcAttach.remove, ...rest]"
# The page's copy of the waiting files: written on every change (the page answers with the files it could not
# keep), read back on load.
JS_KEEP = "(text) => [window.qcAttach.keep(text)]"
JS_KEPT = "(text, pending) => [window.qcAttach.kept(), pending]"


@dataclass
class AttachControls:
    """The components of attaching besides the paperclip button: made in the page's layout, wired by ``wire``."""

    chips: gr.HTML
    pending: gr.State  # [{"name": ..., "text": ...}, ...] waiting for the next message
    remove_request: gr.Textbox  # which chip's × was clicked (set by the page's script)
    remove_button: gr.Button  # clicked by the page's script
    kept: gr.Textbox  # the waiting list as JSON, for the page to keep in the tab (hidden)


def attach_button() -> gr.UploadButton:
    """The paperclip button (in the composer's row): picks files; the page's script gives it dropped and pasted ones."""
    return gr.UploadButton(
        "Attach files",  # read aloud; the page shows a paperclip (attach.css)
        file_count="multiple",
        size="sm",
        variant="secondary",
        elem_id="qc-attach",
        scale=0,
        min_width=44,
    )


def attach_controls() -> AttachControls:
    """The chips line (made where this is called: above the composer) and the hidden parts of attaching."""
    chips = gr.HTML("", elem_id="qc-attached")
    pending = gr.State([])
    remove_request = gr.Textbox("", visible="hidden")
    remove_button = gr.Button(visible="hidden", elem_id="qc-detach")
    kept = gr.Textbox("", visible="hidden", elem_id="qc-attached-kept")
    return AttachControls(chips, pending, remove_request, remove_button, kept)


def chips_html(pending: Any) -> str:
    """The files waiting for the next message, one chip each (name, size, a × to take it off)."""
    chips = []
    for index, item in enumerate(attachments_of(pending)):
        name = html.escape(item.name)
        chips.append(
            f'<span class="qc-chip" title="{name} · {html.escape(describe_size(item.text))}">'
            f'<span class="qc-chip-name">{name}</span>'
            f'<span class="qc-chip-size">{len(item.text):,} chars</span>'
            f'<button type="button" class="qc-chip-x qc-detach-{index}" aria-label="Remove {name}">×</button></span>'
        )
    return f'<div class="qc-chips">{"".join(chips)}</div>' if chips else ""


def shown(pending: Any) -> tuple[str, str]:
    """The chips of the waiting files, and the list as JSON for the page to keep (outputs: chips, kept)."""
    return chips_html(pending), json.dumps([item.as_dict() for item in attachments_of(pending)], ensure_ascii=False)


def not_kept_notice(outcome: str) -> Any:
    """What the page says when the browser's storage could not keep some waiting files (``outcome``: the page's
    JSON list of them, each {"name", "chars"}; empty when all were kept: the notice is left alone)."""
    items = from_json(outcome)
    named = [item for item in items or [] if isinstance(item, dict) and isinstance(item.get("name"), str)]
    if not named:
        return gr.skip()
    listed = ", ".join(f"“{item['name']}” ({int(item.get('chars') or 0):,} characters)" for item in named)
    them, are = ("them", "They are") if len(named) > 1 else ("it", "It is")
    return info_html(
        f"Too large for this tab's storage: {listed}. {are} attached, but a reload before sending would take "
        f"{them} off the message (the page would then ask you to attach {them} again)."
    )


def restore_kept(kept: str, pending: Any, max_chars: int) -> tuple[Any, Any, Any]:
    """The files the page kept for the tab (``kept``: JSON, ``shown``'s) back in the waiting list, after those
    already attached since the load (outputs: waiting list, notice, the list for the page to keep from now on).

    The page's copy is taken back as typed text is, within the bounds of files attached: at most ``MAX_ATTACHED``
    files, ``max_chars`` characters together. A file the page kept by name only (too large for its storage),
    or past those bounds (a server restarted with a smaller --max-chat-mb), is not put back; the notice names it.
    """
    items = from_json(kept)
    if not isinstance(items, list) or not items:
        return gr.skip(), gr.skip(), gr.skip()
    waiting = [item.as_dict() for item in attachments_of(pending)]
    missing: list[str] = []
    lost: list[str] = []
    for item in items:
        found = attachments_of([item])
        if not found:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                missing.append(f"“{item['name']}”")
            continue
        used = sum(len(entry["text"]) for entry in waiting)
        if len(waiting) >= MAX_ATTACHED or used + len(found[0].text) > max_chars:
            lost.append(f"“{found[0].name}”")
            continue
        waiting.append(found[0].as_dict())
    notes = []
    if missing:
        them = "them" if len(missing) > 1 else "it"
        notes.append(
            f"Not kept across the reload (too large for this tab's storage): {', '.join(missing)}. Attach {them} again."
        )
    if lost:
        notes.append(
            f"Not put back: {', '.join(lost)} (a message takes at most {MAX_ATTACHED} files, {max_chars:,} "
            "characters together). Send the files attached first, or attach a part of a file."
        )
    notice = "".join(f'<div class="qc-notice" role="alert">{html.escape(text)}</div>' for text in notes)
    return waiting, notice or gr.skip(), shown(waiting)[1]


def from_json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def attach(files: Any, pending: Any, max_chars: int) -> tuple[Any, str]:
    """Read the uploaded ``files`` (paths) into the waiting list, deleting each upload once read.

    Returns the new list and a notice: empty when every file was read, else one line per file refused
    (saying why and what is accepted). ``max_chars``: the most text the files waiting may hold together.
    """
    paths = [files] if isinstance(files, str) else list(files or [])
    kept = [item.as_dict() for item in attachments_of(pending)]
    problems: list[str] = []
    for path in paths:
        try:
            if len(kept) >= MAX_ATTACHED:
                raise ChatbotError(
                    f"A message takes at most {MAX_ATTACHED} files.", fix="Send these first, then attach more."
                )
            room = max_chars - sum(len(item["text"]) for item in kept)
            kept.append(read_attachment(path, max(room, 0)).as_dict())
        except ChatbotError as error:
            problems.append(error.message + (f" {error.fix}" if error.fix else ""))
        finally:
            discard_upload(path)
    notice = "".join(f'<div class="qc-notice" role="alert">{html.escape(text)}</div>' for text in problems)
    return kept, notice


def detach(request: str, pending: Any) -> list[dict[str, str]]:
    """The waiting list without the file whose chip's × was clicked (``request``: its position)."""
    kept = [item.as_dict() for item in attachments_of(pending)]
    if request.isdigit() and int(request) < len(kept):
        del kept[int(request)]
    return kept


def reclaim(box: str, pending: Any) -> tuple[Any, Any]:
    """A message put back in the box with its files written in (Edit last, ↑): the typed text stays in the
    box, the files go back to the chips (outputs: message box, waiting list)."""
    typed, files = split(box or "")
    if not files:
        return gr.skip(), gr.skip()
    kept = attachments_of(pending)
    return typed, [item.as_dict() for item in [*kept, *files][-MAX_ATTACHED:]]


def with_attached(
    send: Callable[..., Iterator[tuple[Any, ...]]],
) -> Callable[..., Iterator[tuple[Any, ...]]]:
    """``send`` (message, inputs, request) taking the waiting files too: (message, attached, inputs, request).

    The files are written into the message; each output gains the waiting list: emptied once the server
    has stored the message (it empties the box). A message given back (refused: too long for the context,
    a reply still running; stopped while queued) comes back to the box as typed, its files to their chips.
    """

    def send_with_files(message: str, attached: Any, inputs: Any, request: gr.Request) -> Iterator[tuple[Any, ...]]:
        files: list[Attachment] = attachments_of(attached)
        combined = compose(message, files)
        for chat, box, notice, *rest in send(combined, inputs, request):
            waiting: Any = gr.skip()
            if files and isinstance(box, str) and box == combined:
                box, waiting = message, [item.as_dict() for item in files]
                if isinstance(notice, str) and "context window" in notice:
                    notice += info_html(FILES_COUNT)
            elif files and isinstance(box, str) and box == "":
                waiting = []
            yield chat, box, notice, *rest, waiting

    send_with_files.__name__ = send.__name__
    return send_with_files


def info_html(text: str) -> str:
    return f'<div class="qc-notice qc-info" role="status">{html.escape(text)}</div>'


def wire(controls: AttachControls, button: gr.UploadButton, *, notice: gr.HTML, max_chars: int) -> dict[str, Any]:
    """The events of attaching: upload (button, drop, paste), the chips redrawn and kept by the page, a chip's ×
    (private events). Returns the page load's step that puts the files the page kept back (for ``.then``)."""
    private: dict[str, Any] = {"api_visibility": "private"}

    def read(files: Any, pending: Any) -> tuple[Any, str]:
        return attach(files, pending, max_chars)

    def put_back(kept: str, pending: Any) -> tuple[Any, Any, Any]:
        return restore_kept(kept, pending, max_chars)

    button.upload(read, [button, controls.pending], [controls.pending, notice], show_progress="hidden", **private)
    controls.pending.change(shown, controls.pending, [controls.chips, controls.kept], show_progress="hidden", **private)
    controls.kept.change(
        not_kept_notice, controls.kept, notice, js=JS_KEEP, queue=False, show_progress="hidden", **private
    )
    controls.remove_button.click(
        detach, [controls.remove_request, controls.pending], controls.pending, js=JS_DETACH, **private
    )
    return dict(
        fn=put_back,
        inputs=[controls.kept, controls.pending],
        outputs=[controls.pending, notice, controls.kept],
        js=JS_KEPT,
        show_progress="hidden",
        **private,
    )
