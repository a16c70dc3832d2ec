"""The web UI: a Gradio chat over the app's backend (``Backend.stream``), one chat per browser tab.

python app.py --demo            # then open http://127.0.0.1:7860

``build_ui(app)`` makes the page, ``launch_ui(app)`` serves it (blocking) on the host and port of
the settings, behind a login when ``--auth`` / ``QWEN_AUTH`` is set. What it shows is drawn by
``ui_render``, the events are handled by ``ui_handlers``; this module lays out the page and wires
them:

* the chats live in the browser (``assets/chat.js``: one localStorage entry per chat, the tab's
  current chat in sessionStorage), listed in the left panel (new, open, rename, delete with undo,
  search, export and import one chat or all);
* the settings (theme, thinking, sampling) and the saved system prompts (``ui_prompts``) are kept per
  browser in a ``gr.BrowserState``;
* files dropped, pasted or picked are attached to the next message (``ui_attach``, ``attachments``);
* every reply gets its own stop signal; Stop (or Esc) sets the signals of its own session only;
* the reply handler has no Gradio concurrency limit, so every request reaches the engine's own
  bounded FIFO queue, whose position is shown under the pending answer.

Endpoints for ``gradio_client``: /chat, /regenerate, /edit_message (the Chatbot's own edit event),
/switch_version, /previous_answer, /next_answer, /continue_reply, /delete_message, /stop, /undo, /edit_last,
/clear, /new_chat, /export_conversation, /export_all_markdown, /import_conversation, /model_status, /context_meter.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ..engine.sampling import DEFAULT_MAX_NEW_TOKENS, NON_THINKING_DEFAULTS, THINKING_DEFAULTS
from . import ui_attach, ui_export, ui_prompts
from .app_state import App
from .security import ui_middleware
from .session_budget import SessionBudget
from .session_owner import SessionOwnership, cookie_key
from .slow_clients import deadline_by_default
from .ui_asked import AskedReplies, arriving
from .ui_continue import continue_reply
from .ui_delete import delete_message
from .ui_errors import EventErrors, log_event_errors
from .ui_handlers import ChatHandlers, ReplyInputs, session_of
from .ui_session import storage_secret
from .uploads import UPLOAD_TTL_SECONDS, UploadQuota

log = logging.getLogger(__name__)
# The page's script, style and logo: inside the package once installed (pip install .), else the checkout's assets/.
_PACKAGED_ASSETS = Path(__file__).resolve().parents[1] / "assets"
ASSETS = _PACKAGED_ASSETS if _PACKAGED_ASSETS.is_dir() else Path(__file__).resolve().parents[2] / "assets"
REMOTE_BADGE_SECONDS = 2.0  # how often the page asks about a backend that never settles (a remote server)
MAX_SLIDER_TOKENS = 32768  # until the model is loaded and its context is known
# The delimiters Qwen3 writes. Its inline "$x$" reaches the page as "\(x\)" (ui_render.inline_math, which
# leaves prices such as "$5 and $10" as text), so a lone "$" is never a delimiter here.
LATEX_DELIMITERS: list[dict[str, str | bool]] = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "\\[", "right": "\\]", "display": True},
    {"left": "\\(", "right": "\\)", "display": False},
]
SETTING_NAMES: tuple[str, ...] = ("theme", "thinking", *("temperature", "top_p", "top_k", "max_new_tokens"))
SETTING_NAMES += ("presence_penalty", "repetition_penalty", "min_new_tokens")
KEPT_NAMES = (*SETTING_NAMES, "prompts")  # what the browser keeps: the settings' controls, then the saved prompts
SHORTCUTS = """| keys | does |
|---|---|
| Enter / Shift+Enter | send / new line |
| Esc | stop the reply |
| Ctrl+Shift+O | new chat |
| ↑ in an empty message box | edit the last message |
| Ctrl+/ | show these shortcuts |"""

# js hooks of events (run in the page before the Python function; their values replace the inputs)
JS_RESTORE = (
    "(record, draft, prompt, editing) => "
    "[qcStore.readText(qcStore.current()), qcStore.draft(), prompt, qcStore.editing()]"
)
JS_INDEX = "(index, id) => [JSON.stringify(qcStore.index(qcStore.searchText())), id]"
# A chat switch or a Stop waits for the first step of a reply asked for just before (assets/chat.js, ui_asked.py).
JS_OPEN = (
    "async (id, record, ...rest) => { await qcAsking.settled(); qcScrollDown(); qcStore.editing(''); "
    "return [id, qcStore.readText(id), ...rest]; }"
)
JS_AFTER_ASKED = "async (...args) => { await qcAsking.settled(); return args; }"
JS_ASKING = "(...args) => { qcScrollDown(); qcAsking.start(); return args; }"
JS_SWITCH = "(request, ...rest) => [qcVersions.request, ...rest]"
JS_DELETE = "(request, ...rest) => [qcDelete.request, ...rest]"


# --- layout -----------------------------------------------------------------------------------------------


def header_html(app: App) -> str:
    logo = (ASSETS / "logo.svg").read_text(encoding="utf-8")
    # A local checkpoint is named by its folder; the full path is in the tooltip.
    short_name = Path(app.model_name).name if os.sep in app.model_name else app.model_name
    return (
        f'<div class="qc-title">{logo}<div><h1>Qwen3 Chat</h1>'
        f'<span class="qc-model" title="{html.escape(app.model_name)}">{html.escape(short_name)}</span></div></div>'
    )


def api_help(app: App, request: gr.Request | None) -> tuple[str, str]:
    """The OpenAI base URL (as this browser reaches the server) and a copyable snippet for it."""
    if not app.settings.api_port:
        return "The OpenAI-compatible API is off (started with `--api-port 0`).", ""
    host = app.settings.host
    if request is not None and request.headers.get("host"):
        host = request.headers["host"].rsplit(":", 1)[0]
    elif host == "0.0.0.0":
        host = "127.0.0.1"
    base = f"http://{host}:{app.settings.api_port}/v1"
    key = " (and the key given to `--api-key`)" if getattr(app.settings, "api_key", None) else ""
    text = f"OpenAI-compatible API: **`{base}`**{key}, model `{app.model_name}`."
    snippet = (
        f"# pip install openai\n"
        f"from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base}", api_key="{"YOUR_KEY" if key else "unused"}")\n'
        f"reply = client.chat.completions.create(\n"
        f'    model="{app.model_name}",\n'
        f'    messages=[{{"role": "user", "content": "Hello!"}}],\n'
        f"    max_tokens=1024,  # thinking is on by default and counts\n"
        f")\n"
        f"print(reply.choices[0].message.content)\n\n"
        f"# or with curl:\n"
        f"# curl {base}/chat/completions -H 'Content-Type: application/json' \\\n"
        f'#   -d \'{{"model": "{app.model_name}", "max_tokens": 1024,\n'
        f'#         "messages": [{{"role": "user", "content": "Hello!"}}]}}\''
    )
    return text, snippet


@dataclass
class SettingsPanel:
    system_prompt: gr.Textbox
    prompts: ui_prompts.PromptControls  # saved prompts and the one new chats start with
    theme: gr.Radio
    # temperature, top_p, top_k, max_new_tokens, presence_penalty, repetition_penalty, min_new_tokens
    sampling: list[gr.Slider]
    reset_button: gr.Button
    api_text: gr.Markdown
    api_snippet: gr.Code


def settings_panel(app: App, mode: dict[str, Any]) -> SettingsPanel:
    """The right panel (closed at first): system prompt, theme, sampling, the API's address."""
    max_tokens = app.settings.max_context or MAX_SLIDER_TOKENS
    with gr.Sidebar(label="Settings", position="right", open=False, width=360, elem_id="qc-sidebar"):
        gr.Markdown("### Settings", elem_classes="qc-panel-title")
        system_prompt = gr.Textbox(
            app.settings.system_prompt,
            label="System prompt",
            placeholder="e.g. You are a concise assistant. Answer in the user's language.",
            lines=3,
            max_lines=10,
        )
        prompts = ui_prompts.prompt_controls()
        theme = gr.Radio(["System", "Light", "Dark"], value="System", label="Theme", elem_id="qc-theme")
        with gr.Accordion("Sampling", open=True):
            sampling = [
                gr.Slider(0.0, 2.0, mode["temperature"], step=0.05, label="Temperature"),
                gr.Slider(0.05, 1.0, mode["top_p"], step=0.05, label="Top p"),
                gr.Slider(0, 200, mode["top_k"], step=1, label="Top k", info="0 keeps every token"),
                gr.Slider(
                    16,
                    max_tokens,
                    min(DEFAULT_MAX_NEW_TOKENS, max_tokens),
                    step=16,
                    label="Max new tokens",
                    info="At most the model's context less room for the prompt",
                ),
                gr.Slider(-2.0, 2.0, 0.0, step=0.1, label="Presence penalty"),
                gr.Slider(0.5, 2.0, 1.0, step=0.05, label="Repetition penalty"),
                gr.Slider(
                    0, max_tokens, 0, step=16, label="Min new tokens", info="No end of turn before this many tokens"
                ),
            ]
            reset_button = gr.Button("Reset to the mode's defaults", size="sm", variant="secondary")
            gr.Markdown(
                "Defaults follow the thinking mode (0.6 / 0.95 / 20 thinking, 0.7 / 0.8 / 20 without) "
                "until you change them. Settings are kept in this browser.",
                elem_classes="qc-hint",
            )
        with gr.Accordion("Use from code (OpenAI API)", open=False, elem_id="qc-api"):
            api_text = gr.Markdown(elem_id="qc-api-url")
            api_snippet = gr.Code(language="python", interactive=False, show_label=False, elem_id="qc-api-snippet")
    return SettingsPanel(system_prompt, prompts, theme, sampling, reset_button, api_text, api_snippet)


@dataclass
class ChatsPanel:
    new_button: gr.Button
    search: gr.Textbox
    chats: gr.Radio
    title_box: gr.Textbox
    rename_button: gr.Button
    delete_button: gr.Button
    undo_delete_button: gr.Button
    export_button: gr.Button
    export_all_button: gr.Button
    import_button: gr.UploadButton
    export_markdown_button: gr.Button
    export_all_markdown_button: gr.Button


def chats_panel(where: str = "in this browser") -> ChatsPanel:
    """The left panel: the chats kept ``where`` (this browser, or this server), newest first, and what can be
    done with them."""
    with gr.Sidebar(label="Chats", position="left", open=True, width=280, elem_id="qc-chats"):
        new_button = gr.Button("+ New chat", variant="primary", size="sm", elem_id="qc-new")
        search = gr.Textbox(
            placeholder="Search chats…",
            label="Search chats",  # not shown: what a screen reader says (Gradio's default is "Textbox")
            show_label=False,
            container=False,
            elem_id="qc-search",
            max_lines=1,
        )
        # Where they are kept, said once (a shared computer's user reads whether clearing the browser loses them).
        kept = "on this server, for your login" if where == "on this server" else "in this browser"
        gr.Markdown(f"Chats kept {kept}", elem_id="qc-where", elem_classes="qc-hint")
        chats = gr.Radio([], label=f"Chats {where}", elem_id="qc-list", container=False)
        with gr.Row(elem_id="qc-chat-tools"):
            delete_button = gr.Button("Delete", size="sm", variant="secondary", elem_id="qc-delete", min_width=60)
            undo_delete_button = gr.Button(
                "↶ Undo delete", size="sm", variant="secondary", visible=False, elem_id="qc-undo-delete", min_width=60
            )
        with gr.Row(elem_id="qc-rename"):
            title_box = gr.Textbox(
                placeholder="Rename this chat…",
                label="Chat title",
                show_label=False,
                container=False,
                max_lines=1,
                scale=3,
            )
            rename_button = gr.Button("Rename", size="sm", variant="secondary", scale=1, min_width=60)
        with gr.Row(elem_id="qc-files"):
            export_button = gr.Button("Export", size="sm", variant="secondary", elem_id="qc-export", min_width=60)
            export_all_button = gr.Button(
                "Export all", size="sm", variant="secondary", elem_id="qc-export-all", min_width=50
            )
            import_button = gr.UploadButton(
                "Import",
                file_types=[".json", ".md"],
                file_count="single",
                size="sm",
                variant="secondary",
                elem_id="qc-import",
                min_width=60,
            )
        export_markdown_button = gr.Button(
            "Export as Markdown", size="sm", variant="secondary", elem_id="qc-export-md", min_width=60
        )
        export_all_markdown_button = gr.Button(
            "Export all as Markdown", size="sm", variant="secondary", elem_id="qc-export-all-md", min_width=60
        )
        with gr.Accordion("Keyboard shortcuts", open=False, elem_id="qc-shortcuts"):
            gr.Markdown(SHORTCUTS, elem_classes="qc-hint")
    return ChatsPanel(
        new_button,
        search,
        chats,
        title_box,
        rename_button,
        delete_button,
        undo_delete_button,
        export_button,
        export_all_button,
        import_button,
        export_markdown_button,
        export_all_markdown_button,
    )


def build_ui(app: App) -> gr.Blocks:
    """The chat page for ``app``; events carry explicit API names for ``gradio_client``."""
    handlers = ChatHandlers(app)
    thinking_default = True
    mode = THINKING_DEFAULTS if thinking_default else NON_THINKING_DEFAULTS
    # Files Gradio made (uploads, exports) are deleted once they are UPLOAD_TTL_SECONDS old, used or not.
    cache_sweep = (60, int(UPLOAD_TTL_SECONDS))
    with gr.Blocks(title="Qwen3 Chat", analytics_enabled=False, fill_height=True, delete_cache=cache_sweep) as demo:
        conversation = gr.State(handlers.unrestored_conversation())
        title = gr.State("")
        kept_for_undo = gr.State(None)
        settings_store = gr.BrowserState(None, storage_key="qwen3-chat-settings", secret=storage_secret())
        # Hidden values the page's script reads and writes (gr.State stays on the server, out of its reach).
        chat_id = gr.Textbox(handlers.initial_chat_id, visible="hidden", elem_id="qc-chat-id")
        # JSON as text: this tab's chat as saved (written to localStorage on change), imported chats, a saved
        # chat read by the page for the server, and the [[title, id], ...] index of the saved chats.
        record = gr.Textbox("", visible="hidden", elem_id="qc-record")
        records = gr.Textbox("", visible="hidden")
        read_record = gr.Textbox("", visible="hidden")
        deleted_id = gr.Textbox("", visible="hidden")
        chat_index = gr.Textbox("", visible="hidden")
        export_file = gr.File(visible="hidden")
        refresh_list = gr.Button(visible="hidden", elem_id="qc-refresh-list")  # clicked by the page's script
        version_request = gr.Textbox("", visible="hidden")  # "TURN:STEP", set by the page's script
        editing = gr.Textbox("", visible="hidden")  # Edit last's marker, kept in the tab until the edit is sent
        edit_request = gr.Textbox("", visible="hidden")  # an edited question: {"index": ..., "value": ...}
        switch_button = gr.Button(visible="hidden", elem_id="qc-switch-version")  # clicked by the page's script
        continue_button = gr.Button(visible="hidden", elem_id="qc-continue-reply")  # "Continue ▸" under a cut answer
        delete_request = gr.Textbox("", visible="hidden")  # {"index": position of the message as drawn}
        delete_button = gr.Button(visible="hidden", elem_id="qc-delete-message")  # a message's 🗑, via the script

        chats = chats_panel("on this server" if handlers.store is not None else "in this browser")
        panel = settings_panel(app, mode)
        system_prompt, sampling = panel.system_prompt, panel.sampling
        temperature, top_p, top_k, max_new_tokens = sampling[:4]

        with gr.Row(elem_id="qc-header", equal_height=True):
            gr.HTML(header_html(app), elem_id="qc-brand")
            badge = gr.HTML(handlers.model_status(), elem_id="qc-badge")
        chat = gr.Chatbot(
            elem_id="qc-chat",
            show_label=False,
            scale=1,
            min_height=300,
            layout="bubble",
            sanitize_html=True,
            # Any tag that is not HTML's own is shown as text: sanitized away, "cp <src> <dest>", "List<T>" or a
            # stray <think> took the rest of its paragraph with it. HTML's own is sanitized (scripts, styles,
            # frames and handlers removed); security.PagePolicy stops what is left loading from elsewhere.
            allow_tags=True,
            render_markdown=True,
            latex_delimiters=LATEX_DELIMITERS,
            buttons=["copy", "copy_all"],
            editable="user",  # any question can be edited: answered again from there, earlier version kept
            feedback_options=None,
            group_consecutive_messages=False,
            autoscroll=False,  # the page follows a reply only while the reader is at the bottom (chat.js)
            placeholder="<div class='qc-empty'><b>Ask anything.</b><br>English, 中文, code, Markdown, math…</div>",
        )
        notice = gr.HTML("", elem_id="qc-notice")
        attaching = ui_attach.attach_controls()  # the files waiting for the next message, as chips
        with gr.Row(elem_id="qc-composer"):
            attach_button = ui_attach.attach_button()
            message_box = gr.Textbox(
                label="Message",
                show_label=False,
                placeholder="Message Qwen3…  (Enter sends, Shift+Enter starts a new line)",
                lines=1,
                max_lines=10,
                autofocus=True,
                elem_id="qc-message",
                scale=1,
                container=False,
            )
            send_button = gr.Button("Send", variant="primary", elem_id="qc-send", scale=0, min_width=96)
            stop_button = gr.Button("■ Stop", variant="stop", elem_id="qc-stop", scale=0, min_width=96, visible=False)
        with gr.Row(elem_id="qc-actions"):
            thinking = gr.Checkbox(
                thinking_default, label="Think before answering", elem_id="qc-thinking", scale=0, min_width=210
            )
            meter = gr.HTML("", elem_id="qc-meter")
            # The chat's buttons in a row of their own: on a phone it takes a line under the switch and the meter.
            with gr.Row(elem_id="qc-tools"):
                previous_button = gr.Button(
                    "‹", size="sm", variant="secondary", scale=0, min_width=36, elem_id="qc-prev"
                )
                next_button = gr.Button("›", size="sm", variant="secondary", scale=0, min_width=36, elem_id="qc-next")
                regenerate_button = gr.Button("↻ Regenerate", size="sm", variant="secondary", scale=0, min_width=110)
                undo_button = gr.Button("↶ Undo", size="sm", variant="secondary", scale=0, min_width=80)
                edit_button = gr.Button(
                    "✎ Edit last", size="sm", variant="secondary", scale=0, min_width=100, elem_id="qc-edit"
                )
                clear_button = gr.Button("✕ Clear", size="sm", variant="secondary", scale=0, min_width=80)
        # The badge follows the load, and a remote server's reachability for as long as the page is open.
        status = app.backend.status()
        loading = status.state in ("not loaded", "loading")
        timer = gr.Timer(0.5 if loading else REMOTE_BADGE_SECONDS, active=not status.settled)

        chat_states = [conversation, chat_id, title]
        meter_inputs = [message_box, system_prompt, thinking, max_new_tokens, conversation, attaching.pending]
        reply_outputs = [chat, message_box, notice, conversation, record]
        private: dict[str, Any] = {"api_visibility": "private"}
        # The context meter: counted on the server with the model's tokenizer, after typing pauses
        # (wired first: the later private events that count again would otherwise take its API name).
        # On "change", not "input": Gradio's textbox sends "input" for keys only, so pasted, dropped or
        # filled-in text would not be counted until Send refused it.
        gr.on(
            [
                message_box.change,
                thinking.change,
                max_new_tokens.change,
                system_prompt.change,
                attaching.pending.change,
            ],
            handlers.context_meter,
            meter_inputs,
            meter,
            api_name="context_meter",
            trigger_mode="always_last",
            show_progress="hidden",
            concurrency_limit=None,
        )
        # Each reply: swap Send for Stop (and scroll to the bottom), stream, swap back. The swap runs first
        # (not beside the reply) so that a quick reply cannot finish before it. An edit's first step also
        # keeps what was edited: the Chatbot's event data does not reach the steps chained after it.
        buttons = [send_button, stop_button]
        send = ui_attach.with_attached(handlers.send)  # the message with its attached files written in
        controls = reply_components(
            enable_thinking=thinking,
            system_prompt=system_prompt,
            **dict(zip(SETTING_NAMES[2:], sampling, strict=True)),
            conversation=conversation,
            chat_id=chat_id,
            title=title,
        )
        # The first step notes the reply as asked for: a chat switch right after it waits until it has started.
        show_stop, take_edit = asking_steps(handlers.stops.asked)
        for triggers, start, start_outputs, handler, first, api_name in (
            ([message_box.submit, send_button.click], show_stop, buttons, send, message_box, "chat"),
            ([regenerate_button.click, chat.retry], show_stop, buttons, handlers.regenerate, None, "regenerate"),
            ([chat.edit], take_edit, [edit_request, *buttons], handlers.edit_message, edit_request, "edit_message"),
            ([continue_button.click], show_stop, buttons, continue_reply(handlers), None, "continue_reply"),
        ):
            started = gr.on(
                triggers,
                start,
                None,
                start_outputs,
                concurrency_limit=None,
                trigger_mode="multiple",  # one during a reply is refused at once, saying why (not ignored)
                js=JS_ASKING,
                **private,
            )
            started.then(None, None, None, js="() => { qcAsking.done(); }", trigger_mode="multiple", **private)
            leading = {} if first is None else {"message" if first is message_box else "edit_request": first}
            files = {"attached": attaching.pending} if first is message_box else {}  # then emptied once sent
            # Every step "multiple": a chained step defaults to "once", which makes the page drop a second
            # Enter's reply step while the first reply (the same step) still streams, without a word.
            reply = started.then(
                reply_event(handler, *leading, *files, asked=handlers.stops.asked),
                None,
                reply_outputs + list(files.values()),
                inputs_kwargs={**leading, **files, **controls},
                api_name=api_name,
                concurrency_limit=None,
                show_progress="hidden",
                trigger_mode="multiple",
            )
            # Send again unless a reply is still being written in the chat shown (this one was refused, say).
            reply.then(handlers.reply_buttons, None, buttons, trigger_mode="multiple", **private)
            reply.then(
                handlers.context_meter, meter_inputs, meter, show_progress="hidden", trigger_mode="multiple", **private
            )
        stop_button.click(handlers.stop, None, notice, api_name="stop", queue=False, js=JS_AFTER_ASKED)
        demo.unload(handlers.stop_on_unload)

        # Another chat shown (a version, fewer turns, another or a new chat): the context meter counts it again.
        meter_again = dict(fn=handlers.context_meter, inputs=meter_inputs, outputs=meter, show_progress="hidden")
        gr.on(
            [undo_button.click, chat.undo],
            handlers.undo,
            chat_states,
            [chat, conversation, record],
            api_name="undo",
        ).then(**meter_again, **private)
        switches = [chat, record, notice]
        previous_button.click(handlers.previous_answer, chat_states, switches, api_name="previous_answer").then(
            **meter_again, **private
        )
        next_button.click(handlers.next_answer, chat_states, switches, api_name="next_answer").then(
            **meter_again, **private
        )
        # The ‹ › arrows drawn in the chat under any message with versions (the page's script says which).
        switch_button.click(
            handlers.switch_version,
            [version_request, *chat_states],
            switches,
            js=JS_SWITCH,
            api_name="switch_version",
        ).then(**meter_again, **private)
        delete_button.click(
            delete_message(handlers),
            [delete_request, *chat_states],
            [chat, conversation, record, notice],
            js=JS_DELETE,
            api_name="delete_message",
        ).then(**meter_again, **private)
        edit_button.click(
            handlers.edit_last,
            [message_box, conversation, chat_id],
            [chat, message_box, notice, conversation, record, editing],
            api_name="edit_last",
        ).then(ui_attach.reclaim, [message_box, attaching.pending], [message_box, attaching.pending], **private).then(
            **meter_again, **private
        )

        max_chars = int(app.settings.max_chat_mb * 2**20)  # of the files waiting, together: a chat holds no more
        files_back = ui_attach.wire(attaching, attach_button, notice=notice, max_chars=max_chars)  # kept by the page
        ui_prompts.wire(panel.prompts, system_prompt, notice, meter_again)

        # Chats: every change of this tab's chat is written to the browser, then the list is redrawn.
        # (the page redraws the list itself when a chat is new or renamed, not on every save of a streaming reply)
        record.change(None, record, None, js="(r) => { qcStore.writeText(r); }", **private)
        records.change(None, records, None, js="(rs) => { qcStore.writeAllText(rs); }", **private)
        chat_id.change(None, chat_id, None, js="(id) => { qcStore.setCurrent(id); }", **private)
        editing.change(None, editing, None, js="(marker) => { qcStore.editing(marker); }", **private)
        deleted_id.change(None, deleted_id, None, js="(id) => { qcStore.remove(id); }", **private).then(
            handlers.chat_list, [chat_index, chat_id], chats.chats, js=JS_INDEX, queue=False, **private
        )
        # Typing in the search box and other tabs' changes redraw the list through the page's debounced refresh.
        refresh_list.click(handlers.chat_list, [chat_index, chat_id], chats.chats, js=JS_INDEX, queue=False, **private)
        new_outputs = [chat, conversation, chat_id, title, notice, record]
        # A reply running in the chat left goes on (saved, not drawn): Send or Stop follow the chat shown.
        new = gr.on(
            [chats.new_button.click],
            handlers.new_chat,
            system_prompt,
            new_outputs,
            api_name="new_chat",
            js=JS_AFTER_ASKED,
        )
        new.then(handlers.chat_list, [chat_index, chat_id], chats.chats, js=JS_INDEX, queue=False, **private).then(
            **meter_again, **private
        )
        new.then(handlers.reply_buttons, None, buttons, **private)
        new.then(ui_prompts.for_new_chat, panel.prompts.store, system_prompt, **private).then(**meter_again, **private)
        opened = chats.chats.input(
            handlers.open_chat,
            [chats.chats, read_record, conversation],
            [chat, conversation, chat_id, title, notice, system_prompt],
            js=JS_OPEN,
            **private,
        )
        opened.then(handlers.context_meter, meter_inputs, meter, show_progress="hidden", **private)
        opened.then(handlers.reply_buttons, None, buttons, **private)
        chats.rename_button.click(
            handlers.rename,
            [chats.title_box, conversation, chat_id],
            [title, chats.title_box, record, notice],
            **private,
        )
        gr.on(
            [clear_button.click, chat.clear, chats.delete_button.click],
            handlers.delete,
            chat_states,
            [chat, conversation, chat_id, title, record, deleted_id, kept_for_undo, chats.undo_delete_button],
            api_name="clear",
            js=JS_AFTER_ASKED,
        ).then(**meter_again, **private).then(handlers.reply_buttons, None, buttons, **private)
        chats.undo_delete_button.click(
            handlers.undo_delete,
            kept_for_undo,
            [chat, conversation, chat_id, title, record, chats.undo_delete_button],
            js=JS_AFTER_ASKED,
            **private,
        ).then(**meter_again, **private).then(handlers.reply_buttons, None, buttons, **private)
        chats.export_button.click(
            ui_export.export_conversation, chat_states, export_file, api_name="export_conversation"
        ).then(None, export_file, None, js="(file) => { qcStore.downloadFile(file); }", **private)
        chats.export_markdown_button.click(
            ui_export.export_markdown, chat_states, export_file, api_name="export_markdown"
        ).then(None, export_file, None, js="(file) => { qcStore.downloadFile(file); }", **private)
        # The page exports the chats it keeps itself; chats kept on the server come as a file from there.
        chats.export_all_button.click(
            ui_export.export_all(handlers),
            None,
            export_file,
            js="() => { qcStore.downloadAll(); }",
            api_name="export_all",
        ).then(None, export_file, None, js="(file) => { qcStore.downloadFile(file); }", **private)
        ui_export.wire(handlers, chats.export_all_markdown_button, export_file)
        chats.import_button.upload(
            ui_export.import_conversation(handlers),
            [chats.import_button, system_prompt],
            [chat, notice, system_prompt, conversation, chat_id, title, record, records],
            api_name="import_conversation",
        ).then(**meter_again, **private)

        # The unsent text is kept in the tab: typed, or put back by the server (a refused message). It is
        # emptied only when the server has stored the message (its reply's first step empties the box),
        # so a message that never reached the server (it was down) stays, and a sent one never comes back.
        message_box.change(None, message_box, None, js="(text) => { qcStore.draft(text); }", **private)

        # Settings: kept per browser, restored on load; the theme applies at once.
        setting_controls = [panel.theme, thinking, *sampling, panel.prompts.store]
        for control in setting_controls:
            # Every control of the list has .change (gradio types the list as its common base, FormComponent).
            control.change(save_settings, setting_controls, settings_store, queue=False, **private)  # type: ignore[attr-defined]
        panel.theme.change(None, panel.theme, None, js="(choice) => { qcTheme(choice); }", **private)
        thinking.input(
            handlers.follow_mode, [thinking, temperature, top_p, top_k], [temperature, top_p, top_k], **private
        )
        panel.reset_button.click(handlers.reset_sampling, thinking, sampling, queue=False, **private)

        token_sliders = [max_new_tokens, sampling[6]]
        timer.tick(handlers.poll_model_status, token_sliders, [badge, timer, *token_sliders], queue=False, **private)
        demo.load(handlers.model_status, None, badge, api_name="model_status")
        demo.load(handlers.max_tokens_controls, token_sliders, token_sliders, **private)
        # A new chat in this tab starts with the default system prompt, once both the settings and the chat are back.
        fresh_inputs = [panel.prompts.store, conversation]
        fresh_prompt = dict(fn=ui_prompts.for_fresh_chat, inputs=fresh_inputs, outputs=system_prompt)
        demo.load(restore_settings, settings_store, setting_controls, **private).then(**fresh_prompt, **private).then(
            **meter_again, **private
        )

        def show_api_help(request: gr.Request) -> tuple[str, str]:
            return api_help(app, request)

        demo.load(show_api_help, None, [panel.api_text, panel.api_snippet], **private)
        demo.load(
            handlers.restore,
            [read_record, message_box, system_prompt, editing],
            [chat, system_prompt, conversation, chat_id, title, message_box, notice],
            js=JS_RESTORE,
            **private,
        ).then(handlers.chat_list, [chat_index, chat_id], chats.chats, js=JS_INDEX, queue=False, **private).then(
            handlers.context_meter, meter_inputs, meter, show_progress="hidden", **private
        ).then(**fresh_prompt, **private).then(**meter_again, **private).then(**files_back)
    return demo


def reply_components(**components: Any) -> dict[str, Any]:
    """The components a reply reads, by ``ReplyInputs`` field name (all of them, no other)."""
    if tuple(components) != ReplyInputs.names():
        raise ValueError(f"reply inputs {tuple(components)} differ from ReplyInputs {ReplyInputs.names()}")
    return components


def reply_event(
    handler: Callable[..., Iterator[Any]], *leading: str, asked: AskedReplies | None = None
) -> Callable[..., Iterator[Any]]:
    """Gradio's function for a reply event: the values come by name (``inputs_kwargs``) and go to ``handler``
    as its ``leading`` arguments (the message, or the edit) then one ``ReplyInputs``; ``asked``: where the
    reply's first step noted it, to count it as arrived (``ui_asked``)."""

    def event(request: gr.Request, **values: Any) -> Iterator[Any]:
        first = [values.pop(name) for name in leading]
        outputs = handler(*first, ReplyInputs(**values), request)
        yield from outputs if asked is None else arriving(outputs, asked, session_of(request))

    event.__name__ = handler.__name__
    return event


def show_stop_button() -> tuple[Any, Any]:
    return gr.update(visible=False), gr.update(visible=True)


def asking_steps(asked: AskedReplies) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A reply's first steps (Send swapped for Stop; an edit's, which also keeps what was edited), each noting
    the reply as asked for in ``asked``."""

    def show_stop(request: gr.Request) -> tuple[Any, Any]:
        asked.expect(session_of(request))
        return show_stop_button()

    def take_edit(edit: gr.EditData, request: gr.Request) -> tuple[Any, ...]:
        """An edited question as JSON text for the next step (which position in the chat, the new text)."""
        asked.expect(session_of(request))
        return json.dumps({"index": edit.index, "value": edit.value}, ensure_ascii=False), *show_stop_button()

    return show_stop, take_edit


def save_settings(*values: Any) -> dict[str, Any]:
    return dict(zip(KEPT_NAMES, values, strict=True))


def restore_settings(saved: Any) -> tuple[Any, ...]:
    """The settings this browser kept (a value missing or from an older version keeps the default)."""
    if not isinstance(saved, dict):
        return (gr.skip(),) * len(KEPT_NAMES)
    return tuple(saved[name] if name in saved else gr.skip() for name in KEPT_NAMES)


def page_middleware(app: App) -> list:
    """The door's middleware (Host/Origin, sizes, login), then each session's owner check innermost."""
    from starlette.middleware import Middleware

    owner = Middleware(SessionOwnership, key=cookie_key(storage_secret()), max_sessions=app.settings.session_capacity)
    return [*ui_middleware(app.settings), Middleware(UploadQuota), owner, Middleware(EventErrors)]


def launch_ui(app: App) -> None:
    """Serve the page on ``app.settings.host:port`` until interrupted (login when auth is set)."""
    demo = build_ui(app)
    shown_host = "127.0.0.1" if app.settings.host == "0.0.0.0" else app.settings.host
    log.info(
        "Web UI on http://%s:%d%s",
        shown_host,
        app.settings.port,
        " (login required)" if app.settings.auth else "",
    )
    script = "\n".join((ASSETS / name).read_text(encoding="utf-8") for name in ("chat.js", "attach.js"))
    page_css = (ASSETS / "page.css").read_text(encoding="utf-8")  # as it is: not scoped to the app by Gradio
    # Where the page's chats are kept (assets/chat.js reads it): "server" (one store per login) or "browser".
    keeper = "server" if app.settings.keeps_chats_on_server() else "browser"
    deadline_by_default()  # Gradio's own uvicorn closes connections that never finish their headers, too
    SessionBudget(demo, int(app.settings.session_memory_mb * 2**20)).start()  # held chats within a total
    log_event_errors()  # one rate-limited log line per failed event, not a traceback on stderr
    demo.launch(
        server_name=app.settings.host,
        server_port=app.settings.port,
        auth=app.settings.auth_pairs() or None,
        auth_message="Qwen3 Chat: log in with the user and password given to --auth.",
        css_paths=[ASSETS / "style.css", ASSETS / "attach.css"],
        head=f'<style>{page_css}</style><script>window.qcChatStore = "{keeper}";</script><script>{script}</script>',
        theme=gr.themes.Soft(
            primary_hue="violet",
            neutral_hue="slate",
            font=["Inter", "ui-sans-serif", "system-ui", "sans-serif"],
            font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
        ),
        favicon_path=ASSETS / "logo.svg",
        # Not Gradio's API page (the OpenAI API is in the settings panel), nor its Settings (a second theme
        # switch, "install as an app", screen recording) beside the page's own.
        footer_links=["gradio"],
        pwa=False,
        # Gradio's run history would keep a copy of every message in localStorage, deleted chats included.
        run_history=False,
        ssr_mode=False,
        show_error=False,  # no Python error text reaches a browser; handlers show their own notices
        # Gradio's /monitoring would show usage to anyone without --auth and print its key's URL on each visit.
        enable_monitoring=False,
        quiet=True,
        app_kwargs={"middleware": page_middleware(app)},
        max_file_size=int(app.settings.max_upload_mb * 2**20),
        state_session_capacity=app.settings.session_capacity,  # beyond: the least recently used tab's chat is let go
    )
