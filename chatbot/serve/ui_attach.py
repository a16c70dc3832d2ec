"""Files attached to a web chat message, on the page: the paperclip button, the chips above the message box, the send.

A file dropped on the page, pasted into the message box (``assets/attach.js`` hands both to the paperclip
button) or picked with it is uploaded (bounded by ``uploads.UploadQuota``), read at once as text
by ``attachments.read_attachment`` and deleted; its text waits, server side, in the tab's ``gr.State``
until the message is sent, shown as a chip (name, size, ×) above the box. Send writes the files into the
message (``attachments.compose``); the files are let go once the server has stored the message (when
it empties the box), and stay attached, with the typed text back in the box, when the message is refused
(too long for the context, a reply still running). "Edit last" (or ↑) takes a message's files back into
the chips.
"""

from __future__ import annotations

import html
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


@dataclass
class AttachControls:
    """The components of attaching besides the paperclip button: made in the page's layout, wired by ``wire``."""

    chips: gr.HTML
    pending: gr.State  # [{"name": ..., "text": ...}, ...] waiting for the next message
    remove_request: gr.Textbox  # which chip's × was clicked (set by the page's script)
    remove_button: gr.Button  # clicked by the page's script


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
    return AttachControls(chips, pending, remove_request, remove_button)


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


def wire(controls: AttachControls, button: gr.UploadButton, *, notice: gr.HTML, max_chars: int) -> None:
    """The events of attaching: upload (button, drop, paste), the chips redrawn, a chip's × (private events)."""
    private: dict[str, Any] = {"api_visibility": "private"}

    def read(files: Any, pending: Any) -> tuple[Any, str]:
        return attach(files, pending, max_chars)

    button.upload(read, [button, controls.pending], [controls.pending, notice], show_progress="hidden", **private)
    controls.pending.change(chips_html, controls.pending, controls.chips, show_progress="hidden", **private)
    controls.remove_button.click(
        detach, [controls.remove_request, controls.pending], controls.pending, js=JS_DETACH, **private
    )
