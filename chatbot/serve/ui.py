"""The web UI: a Gradio chat over ``chatbot.chat.reply.stream_reply``, one ``Conversation`` per browser session.

python app.py --demo            # then open http://127.0.0.1:7860

``build_ui(app)`` makes the page, ``launch_ui(app)`` serves it (blocking) on the host and port of
the settings, behind a login when ``--auth`` / ``QWEN_AUTH`` is set. What it shows is drawn by
``ui_render``; this module only wires events to the chat layer:

* each session's history lives in a ``gr.State`` and is mirrored to the browser's localStorage
  (``gr.BrowserState``), so it survives a reload and is never shared between sessions;
* every reply gets its own stop signal; Stop sets the signals of its own session only;
* the reply handler has no Gradio concurrency limit, so every request reaches the engine's own
  bounded FIFO queue, whose position is shown under the pending answer.

Endpoints for ``gradio_client`` (see the "Use via API" page): /chat, /regenerate, /stop, /undo,
/edit_last, /clear, /export_conversation, /import_conversation, /model_status.
"""

from __future__ import annotations

import html
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ..chat.reply import AnswerDelta, ChatEvent, Conversation, Loading, QueuePosition, ThinkingDelta, Turn, stream_reply
from ..engine.sampling import DEFAULT_MAX_NEW_TOKENS, NON_THINKING_DEFAULTS, THINKING_DEFAULTS
from ..errors import ChatbotError
from .app_state import App
from .security import ui_middleware
from .ui_render import LiveReply, badge_html, conversation_messages, user_message
from .ui_session import StopSignals, from_saved_form, is_mode_default, sampling_kwargs, saved_form, storage_secret

log = logging.getLogger(__name__)
ASSETS = Path(__file__).resolve().parents[2] / "assets"
MAX_SLIDER_TOKENS = 32768
STREAM_INTERVAL_SECONDS = 0.04  # at most ~25 screen updates a second, however fast the model is


# --- handlers ---------------------------------------------------------------------------------------------


def notice_html(error: ChatbotError | str) -> str:
    text = error if isinstance(error, str) else error.message + (f" {error.fix}" if error.fix else "")
    return f'<div class="qc-notice" role="alert">{html.escape(text)}</div>'


class ChatHandlers:
    """The functions behind the page's events; one instance per app, state passed in by Gradio."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.stops = StopSignals()

    def send(
        self,
        message: str,
        enable_thinking: bool,
        system_prompt: str,
        temperature: float,
        top_p: float,
        top_k: float,
        max_new_tokens: float,
        presence_penalty: float,
        repetition_penalty: float,
        min_new_tokens: float,
        conversation: Conversation,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        """Stream the reply to ``message``; outputs (chat, message box, notice, conversation)."""
        if not message.strip():
            text = "Type a message first." if not message else "The message is only blank space: type some text."
            gr.Warning(text)
            yield conversation_messages(conversation), message, notice_html(text), conversation
            return
        options = sampling_kwargs(
            temperature, top_p, top_k, max_new_tokens, presence_penalty, repetition_penalty, min_new_tokens
        )
        yield from self._reply(conversation, message, enable_thinking, system_prompt, options, request.session_hash)

    def regenerate(
        self,
        enable_thinking: bool,
        system_prompt: str,
        temperature: float,
        top_p: float,
        top_k: float,
        max_new_tokens: float,
        presence_penalty: float,
        repetition_penalty: float,
        min_new_tokens: float,
        conversation: Conversation,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        """Answer the last message again (the previous answer comes back if this one fails)."""
        if len(conversation.turns) < 2:
            text = "There is no answer to regenerate yet."
            gr.Warning(text)
            yield conversation_messages(conversation), gr.skip(), notice_html(text), conversation
            return
        previous = conversation.turns[-2:]
        del conversation.turns[-2:]
        options = sampling_kwargs(
            temperature, top_p, top_k, max_new_tokens, presence_penalty, repetition_penalty, min_new_tokens
        )
        yield from self._reply(
            conversation,
            previous[0].content,
            enable_thinking,
            system_prompt,
            options,
            request.session_hash,
            restore=previous,
        )

    def _reply(
        self,
        conversation: Conversation,
        message: str,
        enable_thinking: bool,
        system_prompt: str,
        options: dict[str, Any],
        session: str,
        restore: list[Turn] | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        conversation.system_prompt = system_prompt.strip()
        earlier = conversation_messages(conversation)
        live = LiveReply()
        yield [*earlier, user_message(message), *live.messages()], "", "", conversation
        with self.stops.reply(session) as stop:
            try:
                next_update = 0.0
                for event in stream_reply(
                    self.app.engine,
                    conversation.messages_with(message),
                    enable_thinking=enable_thinking,
                    cancel=stop,
                    client=f"ui:{session}",  # each browser session takes its own turns
                    **options,
                ):
                    if stop.is_set() and isinstance(event, Loading):
                        break  # stopped while the model was still loading
                    first_of_its_kind = isinstance(event, QueuePosition) or _starts_a_part(event, live)
                    live.apply(event)
                    now = time.perf_counter()
                    if live.done is not None or (now < next_update and not first_of_its_kind):
                        continue
                    next_update = now + STREAM_INTERVAL_SECONDS
                    yield [*earlier, user_message(message), *live.messages()], gr.skip(), "", conversation
            except ChatbotError as error:
                conversation.turns.extend(restore or [])
                gr.Warning(error.message)
                yield conversation_messages(conversation), message, notice_html(error), conversation
                return
        if live.done is None or (live.done.finish_reason == "cancelled" and not live.done.full_response.strip()):
            # Stopped before the model wrote anything: nothing to keep, the text goes back in the box.
            conversation.turns.extend(restore or [])
            text = "Stopped before the model started on this message."
            yield conversation_messages(conversation), message, notice_html(text), conversation
            return
        conversation.add_exchange(message, live.done)
        conversation.turns[-1].stats = live.stats
        yield conversation_messages(conversation), gr.skip(), "", conversation

    def stop(self, request: gr.Request) -> str:
        """Stop this session's running reply (other sessions keep theirs)."""
        stopped = self.stops.stop(request.session_hash)
        return "" if stopped else notice_html("Nothing to stop.")

    def stop_on_unload(self, request: gr.Request) -> None:
        """A closed or reloaded tab stops its reply: nobody is left to read it."""
        self.stops.stop(request.session_hash)

    def undo(self, conversation: Conversation) -> tuple[Any, ...]:
        """Remove the last exchange."""
        if len(conversation.turns) >= 2:
            del conversation.turns[-2:]
        return conversation_messages(conversation), conversation

    def edit_last(self, message: str, conversation: Conversation) -> tuple[Any, ...]:
        """Remove the last exchange and put its question back in the message box to be edited and sent."""
        if len(conversation.turns) < 2:
            gr.Warning("There is no message to edit yet.")
            return conversation_messages(conversation), message, conversation
        question = conversation.turns[-2].content
        del conversation.turns[-2:]
        return conversation_messages(conversation), question, conversation

    def clear(self, conversation: Conversation) -> tuple[Any, ...]:
        conversation.clear()
        return [], conversation

    def export_conversation(self, conversation: Conversation) -> str:
        """Write the conversation to a JSON file and return its path (the page offers it as a download)."""
        folder = Path(tempfile.mkdtemp(prefix="qwen3-chat-export-"))
        path = folder / "conversation.json"
        path.write_text(json.dumps(saved_form(conversation), ensure_ascii=False, indent=2), encoding="utf-8")
        return str(path)

    def import_conversation(self, file: str | None, system_prompt: str, conversation: Conversation) -> tuple[Any, ...]:
        """Replace the conversation (and the system prompt, when the file has one) with an exported file's."""
        unchanged = conversation_messages(conversation), gr.skip(), conversation
        if not file:
            return unchanged[0], notice_html("Choose a JSON file to import."), gr.skip(), conversation
        try:
            data = json.loads(Path(file).read_text(encoding="utf-8"))
            imported = from_saved_form(data, system_prompt.strip())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            error = ChatbotError(f"The file is not valid JSON ({exc}).", fix="Import a file made by Export.")
            gr.Warning(error.message)
            return unchanged[0], notice_html(error), *unchanged[1:]
        except ChatbotError as error:
            gr.Warning(error.message)
            return unchanged[0], notice_html(error), *unchanged[1:]
        return conversation_messages(imported), "", imported.system_prompt, imported

    def restore(self, saved: Any, system_prompt: str) -> tuple[Any, ...]:
        """On page load: the conversation (and system prompt) this browser kept, if any."""
        if not saved:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            conversation = from_saved_form(saved, system_prompt.strip())
        except ChatbotError:
            return gr.skip(), gr.skip(), gr.skip()  # storage from an older version: start afresh
        return conversation_messages(conversation), conversation.system_prompt, conversation

    def model_status(self) -> str:
        """The precision badge as HTML (mode, reason, device, weights' memory, or loading progress)."""
        return badge_html(self.app.engine, demo=self.app.settings.demo)

    def poll_model_status(self) -> tuple[str, Any]:
        """The badge, and the timer switched off once loading has ended."""
        loading = self.app.engine.status in ("loading", "not loaded")
        return self.model_status(), gr.Timer(active=loading)

    def follow_mode(self, enable_thinking: bool, temperature: float, top_p: float, top_k: float) -> tuple[Any, ...]:
        """Switch sampling to the new mode's defaults, unless the user has chosen their own values."""
        if not is_mode_default({"temperature": temperature, "top_p": top_p, "top_k": top_k}):
            return gr.skip(), gr.skip(), gr.skip()
        defaults = THINKING_DEFAULTS if enable_thinking else NON_THINKING_DEFAULTS
        return defaults["temperature"], defaults["top_p"], defaults["top_k"]

    def reset_sampling(self, enable_thinking: bool) -> tuple[Any, ...]:
        defaults = THINKING_DEFAULTS if enable_thinking else NON_THINKING_DEFAULTS
        return defaults["temperature"], defaults["top_p"], defaults["top_k"], DEFAULT_MAX_NEW_TOKENS, 0.0, 1.0, 0

    def save(self, conversation: Conversation) -> dict[str, Any]:
        return saved_form(conversation)


def _starts_a_part(event: ChatEvent, live: LiveReply) -> bool:
    """The first piece of the thinking or of the answer: always shown at once, however fast the model."""
    first_thought = isinstance(event, ThinkingDelta) and not live.thinking
    return first_thought or (isinstance(event, AnswerDelta) and not live.answer)


def show_stop_button() -> tuple[Any, Any]:
    return gr.update(visible=False), gr.update(visible=True)


def show_send_button() -> tuple[Any, Any]:
    return gr.update(visible=True), gr.update(visible=False)


# --- layout -----------------------------------------------------------------------------------------------


def header_html(app: App) -> str:
    logo = (ASSETS / "logo.svg").read_text(encoding="utf-8")
    # A local checkpoint is named by its folder; the full path is in the tooltip.
    short_name = Path(app.model_name).name if os.sep in app.model_name else app.model_name
    return (
        f'<div class="qc-title">{logo}<div><h1>Qwen3 Chat</h1>'
        f'<span class="qc-model" title="{html.escape(app.model_name)}">{html.escape(short_name)}</span></div></div>'
    )


@dataclass
class SettingsPanel:
    system_prompt: gr.Textbox
    # temperature, top_p, top_k, max_new_tokens, presence_penalty, repetition_penalty, min_new_tokens
    sampling: list[gr.Slider]
    reset_button: gr.Button
    export_button: gr.Button
    export_file: gr.File
    import_button: gr.UploadButton


def settings_panel(app: App, mode: dict[str, Any]) -> SettingsPanel:
    """The side panel: system prompt, sampling (starting at ``mode``'s defaults), export and import."""
    max_tokens = app.settings.max_context or MAX_SLIDER_TOKENS
    with gr.Sidebar(label="Settings", position="right", open=True, width=360, elem_id="qc-sidebar"):
        gr.Markdown("### Settings", elem_classes="qc-panel-title")
        system_prompt = gr.Textbox(
            app.settings.system_prompt,
            label="System prompt",
            placeholder="e.g. You are a concise assistant. Answer in the user's language.",
            lines=3,
            max_lines=10,
        )
        with gr.Accordion("Sampling", open=True):
            sampling = [
                gr.Slider(0.0, 2.0, mode["temperature"], step=0.05, label="Temperature"),
                gr.Slider(0.05, 1.0, mode["top_p"], step=0.05, label="Top p"),
                gr.Slider(0, 200, mode["top_k"], step=1, label="Top k", info="0 keeps every token"),
                gr.Slider(16, max_tokens, min(DEFAULT_MAX_NEW_TOKENS, max_tokens), step=16, label="Max new tokens"),
                gr.Slider(-2.0, 2.0, 0.0, step=0.1, label="Presence penalty"),
                gr.Slider(0.5, 2.0, 1.0, step=0.05, label="Repetition penalty"),
                gr.Slider(
                    0, max_tokens, 0, step=16, label="Min new tokens", info="No end of turn before this many tokens"
                ),
            ]
            reset_button = gr.Button("Reset to the mode's defaults", size="sm", variant="secondary")
            gr.Markdown(
                "Defaults follow the thinking mode (0.6 / 0.95 / 20 thinking, 0.7 / 0.8 / 20 without) "
                "until you change them.",
                elem_classes="qc-hint",
            )
        with gr.Accordion("Conversation file", open=False):
            export_button = gr.Button("Export as JSON", size="sm", variant="secondary")
            export_file = gr.File(label="Exported conversation", interactive=False, height=70)
            import_button = gr.UploadButton(
                "Import JSON", file_types=[".json"], file_count="single", size="sm", variant="secondary"
            )
    return SettingsPanel(system_prompt, sampling, reset_button, export_button, export_file, import_button)


def build_ui(app: App) -> gr.Blocks:
    """The chat page for ``app``; events carry explicit API names for ``gradio_client``."""
    handlers = ChatHandlers(app)
    thinking_default = True
    mode = THINKING_DEFAULTS if thinking_default else NON_THINKING_DEFAULTS
    with gr.Blocks(title="Qwen3 Chat", analytics_enabled=False, fill_height=True) as demo:
        conversation = gr.State(Conversation(app.settings.system_prompt))
        saved = gr.BrowserState(None, storage_key="qwen3-chat-conversation", secret=storage_secret())

        panel = settings_panel(app, mode)
        system_prompt, sampling = panel.system_prompt, panel.sampling
        temperature, top_p, top_k = sampling[:3]

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
            allow_tags=False,
            render_markdown=True,
            buttons=["copy"],
            feedback_options=None,
            group_consecutive_messages=True,
            autoscroll=True,
            placeholder="<div class='qc-empty'><b>Ask anything.</b><br>English, 中文, code, Markdown…</div>",
        )
        notice = gr.HTML("", elem_id="qc-notice")
        with gr.Row(elem_id="qc-composer"):
            message_box = gr.Textbox(
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
            regenerate_button = gr.Button("↻ Regenerate", size="sm", variant="secondary", scale=0, min_width=110)
            undo_button = gr.Button("↶ Undo", size="sm", variant="secondary", scale=0, min_width=80)
            edit_button = gr.Button("✎ Edit last", size="sm", variant="secondary", scale=0, min_width=100)
            clear_button = gr.Button("✕ Clear", size="sm", variant="secondary", scale=0, min_width=80)
        timer = gr.Timer(0.5, active=app.engine.status != "ready")

        reply_outputs = [chat, message_box, notice, conversation]
        reply_settings = dict(concurrency_limit=None, show_progress="hidden")
        # Each reply: swap Send for Stop, stream, save to the browser, swap back. The swap runs first
        # (not beside the reply) so that a quick reply cannot finish before it.
        for triggers, handler, inputs, api_name in (
            ([message_box.submit, send_button.click], handlers.send, [message_box], "chat"),
            ([regenerate_button.click, chat.retry], handlers.regenerate, [], "regenerate"),
        ):
            started = gr.on(
                triggers,
                show_stop_button,
                None,
                [send_button, stop_button],
                api_visibility="private",
                concurrency_limit=None,
                trigger_mode="once",
            )
            reply = started.then(
                handler,
                [*inputs, thinking, system_prompt, *sampling, conversation],
                reply_outputs,
                api_name=api_name,
                **reply_settings,
            )
            # Saved before Send comes back, so that a page showing Send has its conversation stored.
            saving = reply.then(handlers.save, conversation, saved, api_visibility="private")
            saving.then(show_send_button, None, [send_button, stop_button], api_visibility="private")
        stop_button.click(handlers.stop, None, notice, api_name="stop", queue=False)
        demo.unload(handlers.stop_on_unload)

        undone = gr.on(
            [undo_button.click, chat.undo], handlers.undo, conversation, [chat, conversation], api_name="undo"
        )
        edited = edit_button.click(
            handlers.edit_last, [message_box, conversation], [chat, message_box, conversation], api_name="edit_last"
        )
        cleared = gr.on(  # the chat's own trash icon clears the stored conversation too
            [clear_button.click, chat.clear], handlers.clear, conversation, [chat, conversation], api_name="clear"
        )
        imported = panel.import_button.upload(
            handlers.import_conversation,
            [panel.import_button, system_prompt, conversation],
            [chat, notice, system_prompt, conversation],
            api_name="import_conversation",
        )
        for change in (undone, edited, cleared, imported):
            change.then(handlers.save, conversation, saved, api_visibility="private", queue=False)
        panel.export_button.click(
            handlers.export_conversation, conversation, panel.export_file, api_name="export_conversation"
        )

        thinking.change(
            handlers.follow_mode,
            [thinking, temperature, top_p, top_k],
            [temperature, top_p, top_k],
            queue=False,
            api_visibility="private",
        )
        panel.reset_button.click(handlers.reset_sampling, thinking, sampling, queue=False, api_visibility="private")
        timer.tick(handlers.poll_model_status, None, [badge, timer], queue=False, api_visibility="private")
        demo.load(handlers.model_status, None, badge, api_name="model_status")
        demo.load(
            handlers.restore, [saved, system_prompt], [chat, system_prompt, conversation], api_visibility="private"
        )
    return demo


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
    demo.launch(
        server_name=app.settings.host,
        server_port=app.settings.port,
        auth=app.settings.auth_pair(),
        auth_message="Qwen3 Chat: log in with the user and password given to --auth.",
        css_paths=[ASSETS / "style.css"],
        theme=gr.themes.Soft(
            primary_hue="violet",
            neutral_hue="slate",
            font=["Inter", "ui-sans-serif", "system-ui", "sans-serif"],
            font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
        ),
        favicon_path=ASSETS / "logo.svg",
        footer_links=["api"],
        ssr_mode=False,
        show_error=True,
        quiet=True,
        app_kwargs={"middleware": ui_middleware(app.settings)},
        max_file_size=int(app.settings.max_upload_mb * 2**20),
    )
