"""The functions behind the web chat's events (wired to the page in ``ui.py``).

Each tab has its own chat: its ``Conversation`` lives in a ``gr.State`` (server side) and its id in
a hidden textbox that the page keeps in the tab's sessionStorage; every change of the chat goes out
as a record (``ui_session.saved_form``) that the page writes to localStorage under that id. So tabs
never share a chat, the list of chats survives reloads and server restarts, and a reply is saved
while it streams (twice a second), marked interrupted until it ends.
"""

from __future__ import annotations

import html
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gradio as gr

from ..chat.conversation import Conversation
from ..chat.events import AnswerDelta, ChatEvent, Loading, QueuePosition, ThinkingDelta
from ..chat.prompt import build_prompt, could_fit, encode, normalize_messages
from ..chat.request import ChatRequest
from ..engine.sampling import DEFAULT_MAX_NEW_TOKENS, NON_THINKING_DEFAULTS, THINKING_DEFAULTS
from ..errors import ChatbotError
from .app_state import App
from .attachments import attachments_of, compose, with_typed_text
from .chat_store import Chats, PageChats, open_chat_store
from .session_quota import web_client
from .ui_render import LiveReply, badge_html, conversation_messages, indexed_messages, user_messages
from .ui_session import (
    StopSignals,
    check_chat_size,
    from_saved_form,
    is_mode_default,
    max_new_tokens_bound,
    new_chat_id,
    pending_exchange,
    sampling_kwargs,
    saved_form,
)
from .ui_versions import (
    Branch,
    add_version,
    edit_marker,
    hold_pending_edit,
    last_question,
    resume_pending_edit,
    show_version,
    take_pending_edit,
    versions_before_change,
)

log = logging.getLogger(__name__)
# Screen updates are batched: at most ~10 a second however fast the model writes, so a long reply
# costs the browser a few hundred re-renders, not one per token (the first piece of the thinking and
# of the answer are shown at once).
STREAM_INTERVAL_SECONDS = 0.1
# Each screen update renders the whole message's Markdown again in the page, so past a few thousand characters
# updates come less often (one per this many characters shown, in seconds): the page's drawing work per second
# stays bounded however long the reply grows. Without it a 16,000-token reply at 100 tokens/s kept a busy
# browser drawing minutes behind the model, and clicks (Stop, another chat) waited as long.
REDRAW_CHARACTERS_PER_SECOND = 40_000
SAVE_INTERVAL_SECONDS = 0.5  # how often a streaming reply is written to the browser's storage
# How long switching or deleting a chat waits for the tab's running reply to wind down (one decode step,
# normally); a bound, so a stuck reply cannot hold the page.
STOP_WAIT_SECONDS = 10.0
ARCHIVE_FORMAT = "qwen3-chat-archive"  # "Export all": {"format": ..., "chats": [record, ...]}
# A reply's last outputs when its chat was deleted under it. Gradio ends a streaming event by sending its
# last value of every output again; without this, the chat as last drawn (question and partial reply) would
# come back after Clear, and its record would save the deleted chat again.
LEAVE_THE_PAGE_ALONE = (gr.skip(),) * 5
BUSY = "A reply is still being written in this chat: wait for it or press Stop (Esc), then try again."
BUSY_SEND = (
    "A reply is still being written in this chat: your message stays in the box; "
    "send it once the reply ends, or press Stop (Esc) first."
)
EDITING = (
    "You were editing your last message (Edit last): send it and it becomes that question's new version, "
    "the earlier one kept under ‹ ›. Opening the chat again from the list shows it as it was."
)
FULL_CHAT = "Start a new chat (this one stays saved in this browser), or start the server with a larger --max-chat-mb."


@dataclass(frozen=True)
class ReplyInputs:
    """What a reply reads from the page besides its message: the chat controls' values and the tab's chat.

    ``ui.py`` wires one component to each field by name (``reply_components``), so the page and the
    handlers cannot drift apart; the names are also the parameters of /chat, /regenerate and /edit_message.
    """

    enable_thinking: bool
    system_prompt: str
    temperature: float
    top_p: float
    top_k: float
    max_new_tokens: float
    presence_penalty: float
    repetition_penalty: float
    min_new_tokens: float
    conversation: Conversation
    chat_id: str
    title: str

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(item.name for item in fields(cls))

    def sampling(self) -> dict[str, float]:
        """The sampling sliders' values, as ``sampling_kwargs`` takes them."""
        names = ("temperature", "top_p", "top_k", "max_new_tokens", "presence_penalty", "repetition_penalty")
        return {name: getattr(self, name) for name in (*names, "min_new_tokens")}


def notice_html(error: ChatbotError | str) -> str:
    text = error if isinstance(error, str) else error.message + (f" {error.fix}" if error.fix else "")
    return f'<div class="qc-notice" role="alert">{html.escape(text)}</div>'


def info_html(text: str) -> str:
    return f'<div class="qc-notice qc-info" role="status">{html.escape(text)}</div>'


def export_file(name: str, text: str) -> str:
    """``text`` written to a file called ``name`` in a folder of its own; its path, for the page to download."""
    path = Path(tempfile.mkdtemp(prefix="qwen3-chat-export-")) / name
    path.write_text(text, encoding="utf-8")
    return str(path)


class ChatHandlers:
    """The functions behind the page's events; one instance per app, state passed in by Gradio."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.stops = StopSignals()
        self.initial_chat_id = new_chat_id()  # what a session has before its page restores its chat
        self.store = open_chat_store(app.settings)  # None: the chats are kept by each browser

    def chats(self, request: gr.Request) -> Chats:
        """Where the chats of this event's login are kept: on the server (one store per login), or in the page."""
        if self.store is None:
            return PageChats()
        if not request.username:  # the login middleware lets no event through without one
            log.warning("An event came without a login; its chat is not kept on the server")
            return PageChats()
        # A session that never loaded the page (gradio_client) has the id every session starts with: its own here.
        return self.store.user(
            request.username, {self.initial_chat_id: f"{self.initial_chat_id}-{session_of(request)}"}
        )

    def _kept(self, chats: Chats, data: dict[str, Any]) -> str:
        """``data`` (a saved chat) kept where ``chats`` keeps them; its JSON for the page's hidden record.

        A store that refuses it (full) leaves the chat as it was kept, and says so in a pop-up."""
        try:
            chats.save(data)
        except ChatbotError as error:
            log.warning("A chat was not saved: %s", error.message)
            gr.Warning(error.message + (f" {error.fix}" if error.fix else ""))
        return as_text(data)

    def unrestored_conversation(self) -> Conversation:
        """The chat a session starts with (Gradio gives each new session a copy), marked as such."""
        conversation = Conversation(self.app.settings.system_prompt)
        conversation.unrestored = True  # type: ignore[attr-defined]  # every other Conversation lacks it
        return conversation

    def session_lost(self, conversation: Conversation, chat_id: str) -> str | None:
        """A notice when the page shows a chat but the server has only a new session's empty one.

        That happens when the server let the session go (more than --max-sessions tabs since, the held chats
        over --session-memory-mb, or this address holding half the tabs) while the tab stayed open; answering
        from the empty chat would overwrite the chat kept in the browser.
        """
        if getattr(conversation, "unrestored", False) and chat_id != self.initial_chat_id:
            settings = self.app.settings
            kept = "on this server" if self.store else "in this browser"
            return notice_html(
                "The server no longer holds this tab's chat (it keeps the chats of at most "
                f"{settings.session_capacity} tabs within {settings.session_memory_mb:g} MB, the least recently "
                f"used let go first): reload the page. Your chats are kept {kept}."
            )
        return None

    # --- replies ------------------------------------------------------------------------------------------

    def max_new_tokens_limit(self) -> int | None:
        """The most "Max new tokens" can be: the context less room for a prompt, within the server's cap
        (None while the context is unknown: a model still loading, a remote server that does not say)."""
        backend = self.app.backend
        context = backend.context_window()
        return backend.limits.bound(max_new_tokens_bound(context)) if context else None

    def send(self, message: str, inputs: ReplyInputs, request: gr.Request) -> Iterator[tuple[Any, ...]]:
        """Stream the reply to ``message``; outputs (chat, message box, notice, conversation, record)."""
        conversation, chat_id = inputs.conversation, inputs.chat_id
        lost = self.session_lost(conversation, chat_id)
        if lost is not None:  # nothing is saved: the browser keeps the chat as it was
            yield gr.skip(), message, lost, conversation, gr.skip()
            return
        if not message.strip():
            text = "Type a message first." if not message else "The message is only blank space: type some text."
            yield conversation_messages(conversation), message, notice_html(text), conversation, gr.skip()
            return
        if self.stops.running(session_of(request)):  # the message stays in the box, to send once it ends
            yield gr.skip(), message, notice_html(BUSY_SEND), conversation, gr.skip()
            return
        branch = take_pending_edit(conversation)  # after Edit last (or ↑): the old exchange stays a version
        yield from self._reply(inputs, message, session_of(request), branch, web_client(request), self.chats(request))

    def regenerate(self, inputs: ReplyInputs, request: gr.Request) -> Iterator[tuple[Any, ...]]:
        """Answer the last message again (the previous answer comes back if this one fails)."""
        conversation = inputs.conversation
        lost = self.session_lost(conversation, inputs.chat_id)
        if lost is not None:
            yield gr.skip(), gr.skip(), lost, conversation, gr.skip()
            return
        if self.stops.running(session_of(request)):  # first: the reply running is not in ``conversation`` yet
            yield gr.skip(), gr.skip(), notice_html(BUSY), conversation, gr.skip()
            return
        last = len(conversation.turns) - 1
        if last < 1 or conversation.turns[last].role != "assistant" or conversation.turns[last - 1].role != "user":
            notice = notice_html("There is no answer to regenerate yet (Regenerate answers your last message again).")
            yield gr.skip(), gr.skip(), notice, conversation, gr.skip()
            return
        branch = Branch("assistant", versions_before_change(conversation, last), conversation.turns[last - 1 :])
        del conversation.turns[last - 1 :]
        question = branch.removed[0].content
        yield from self._reply(inputs, question, session_of(request), branch, web_client(request), self.chats(request))

    def edit_message(self, edit_request: str, inputs: ReplyInputs, request: gr.Request) -> Iterator[tuple[Any, ...]]:
        """A question edited in place (any of them): answered again from there; what followed it before
        is kept as the question's earlier version (‹ › under the answer switch back).

        ``edit_request``: JSON {"index": position of the message in the chat as drawn, "value": new text}.
        """
        conversation = inputs.conversation
        edit = from_text(edit_request)
        edit = edit if isinstance(edit, dict) else {}
        drawn = indexed_messages(conversation)
        position = edit.get("index")
        index, edited = drawn[position] if isinstance(position, int) and 0 <= position < len(drawn) else (-1, {})
        value = edit.get("value")
        text = value if isinstance(value, str) else ""
        problem = ""
        if index < 0 or conversation.turns[index].role != "user":
            problem = "Only your own messages can be edited, once their reply has ended."
        elif edited.get("metadata"):  # a file attached to the question, drawn folded
            problem = "An attached file cannot be edited: edit the message's text, or send the file again."
        elif self.stops.running(session_of(request)):
            problem = BUSY
        elif not text.strip():
            problem = "An edited message needs some text: type it, or use Undo to remove the exchange."
        if problem:
            yield conversation_messages(conversation), gr.skip(), notice_html(problem), conversation, gr.skip()
            return
        text = with_typed_text(conversation.turns[index].content, text)  # its attached files stay
        if text == conversation.turns[index].content and index + 1 < len(conversation.turns):
            yield conversation_messages(conversation), gr.skip(), "", conversation, gr.skip()  # nothing changed
            return
        branch = Branch("user", versions_before_change(conversation, index), conversation.turns[index:])
        del conversation.turns[index:]
        yield from self._reply(inputs, text, session_of(request), branch, web_client(request), self.chats(request))

    def _options(self, inputs: ReplyInputs) -> dict[str, Any]:
        options = sampling_kwargs(**inputs.sampling())
        limit = self.max_new_tokens_limit() or self.app.backend.limits.max_new_tokens_cap
        if limit is not None and options["max_new_tokens"] > limit:
            # A value past the context (an old saved setting, an API call) would make every message fail.
            options["max_new_tokens"] = limit
            options["min_new_tokens"] = min(options["min_new_tokens"], limit)
        return options

    def _reply(
        self,
        inputs: ReplyInputs,
        message: str,
        session: str,
        branch: Branch | None = None,
        client: str = "ui:unknown",
        chats: Chats | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """Stream a reply to ``message`` after ``inputs.conversation``; ``branch``: what an edit or a regeneration
        replaced (put back if this reply fails, kept as a version once it succeeds); ``client``: whose fair
        turn it takes (``web_client``); ``chats``: where the chat is kept as it grows (default: the page)."""
        chats = chats or PageChats()
        conversation, chat_id, title = inputs.conversation, inputs.chat_id, inputs.title
        options = self._options(inputs)
        conversation.system_prompt = inputs.system_prompt.strip()
        earlier = conversation_messages(conversation)
        live = LiveReply()
        restore = branch.removed if branch is not None else []

        def record_data(pending: bool, tokens: int | None = None) -> dict[str, Any]:
            stats = live.progress_stats(tokens) if pending else live.stats
            exchange = pending_exchange(message, live.thinking, live.answer, stats) if pending else None
            if exchange and branch is not None:  # a reload mid-reply keeps the earlier versions too
                changed = exchange[0 if branch.role == "user" else 1]
                shown = {key: changed[key] for key in ("content", "thinking", "stats") if key in changed}
                changed |= {"versions": [*branch.versions, shown | {"after": []}], "version": len(branch.versions)}
            return saved_form(conversation, chat_id, title, exchange)

        def record(pending: bool, tokens: int | None = None) -> str:
            text = self._kept(chats, record_data(pending, tokens))
            return stop.saving(text) if stop is not None else text  # (called only once ``stop`` is set)

        grown_data = record_data(True)
        grown = as_text(grown_data)
        try:  # a chat grows by typing too: held, it stays within the same bounds as an imported one
            check_chat_size(json.loads(grown), self.app.settings.max_chat_mb, grown, fix=FULL_CHAT)
        except ChatbotError as error:
            conversation.turns.extend(restore)
            yield conversation_messages(conversation), message, notice_html(error), conversation, gr.skip()
            return
        with self.stops.reply(session, chat_id, conversation) as stop:
            if stop is None:  # another reply started in this chat meanwhile (a second Enter, say)
                conversation.turns.extend(restore)
                busy = notice_html(BUSY if branch else BUSY_SEND)
                yield gr.skip(), message if branch is None else gr.skip(), busy, conversation, gr.skip()
                return
            try:
                chats.save(grown_data)  # the question is kept before the model starts; a full store refuses it
            except ChatbotError as error:
                conversation.turns.extend(restore)
                yield conversation_messages(conversation), message, notice_html(error), conversation, gr.skip()
                return
            # The question is stored before the model starts: a reload from now on keeps it.
            with stop.drawing() as shown_here:
                if shown_here:
                    yield [*earlier, *user_messages(message), *live.messages()], "", "", conversation, grown
                else:  # the tab left this chat as it was sent (``StopSignals.detach``): saved, not drawn
                    yield gr.skip(), "", gr.skip(), gr.skip(), grown
            try:
                pace = StreamPace()
                backend = self.app.backend
                request = ChatRequest.build(
                    conversation.messages_with(message),
                    enable_thinking=inputs.enable_thinking,
                    client=client,  # the login or the address: a new tab is no new client
                    limits=backend.limits,
                    **options,
                )
                for event in backend.stream(request, stop):
                    if stop.is_set() and isinstance(event, Loading):
                        break  # stopped while the model was still loading
                    first_of_its_kind = isinstance(event, QueuePosition) or _starts_a_part(event, live)
                    live.apply(event)
                    now = time.perf_counter()
                    if stop.discarded == "dropped" or live.done is not None:
                        continue
                    if not pace.draw_due(now, live, at_once=first_of_its_kind):
                        continue
                    saving = pace.save_due(now)
                    saved = record(True, self._tokens_so_far(live)) if saving else gr.skip()
                    with stop.drawing() as shown_here:
                        if shown_here:
                            shown = [*earlier, *user_messages(message), *live.messages()]
                            # The notice is left alone: one saying why a Send during this reply was
                            # refused would otherwise be wiped by the next piece, 0.1 s later.
                            yield shown, gr.skip(), gr.skip(), conversation, saved
                        elif saving:  # its tab shows another chat: saved, not drawn
                            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), saved
            except ChatbotError as error:
                conversation.turns.extend(restore)
                if stop.discarded == "dropped":
                    yield LEAVE_THE_PAGE_ALONE
                    return
                refused = conversation_messages(conversation), message, notice_html(error), conversation
                with stop.drawing() as shown_here:
                    yield *(refused if shown_here else (gr.skip(),) * 4), record(False)
                return
            if stop.discarded == "dropped":  # the chat was cleared: nothing of this reply is kept
                yield LEAVE_THE_PAGE_ALONE
                return
            interrupted = live.done is not None and stop.interrupted(live.done.finish_reason)
            if live.done is None or (live.done.finish_reason == "cancelled" and not live.done.full_response.strip()):
                # Stopped before the model wrote anything: nothing to keep, the text goes back in the box.
                conversation.turns.extend(restore)
                with stop.drawing() as shown_here:
                    if not shown_here:
                        yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), record(False)
                        return
                    text = "Stopped before the model started on this message."
                    yield conversation_messages(conversation), message, notice_html(text), conversation, record(False)
                return
            conversation.add_exchange(message, live.done)
            # Cancelled by the server (shutting down) or a closed tab, not by the user's Stop: said so, not "stopped".
            conversation.turns[-1].stats = live.stats | ({"finish_reason": "interrupted"} if interrupted else {})
            if branch is not None:  # edited or regenerated: what was there stays as a version to switch back to
                add_version(conversation.turns[-2 if branch.role == "user" else -1], branch.versions)
            with stop.drawing() as shown_here:
                if not shown_here:  # the tab shows another chat: this one is saved, the screen is left alone
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), record(False)
                    return
                yield conversation_messages(conversation), gr.skip(), "", conversation, record(False)

    def _tokens_so_far(self, live: LiveReply) -> int | None:
        """The tokens of a reply still streaming, counted with the model's tokenizer (None without one)."""
        loaded = self.app.backend.loaded
        if loaded is None:
            return None
        return len(loaded.tokenizer.encode(live.thinking + live.answer, add_special_tokens=False))

    def reply_buttons(self, request: gr.Request) -> tuple[Any, Any]:
        """Send, or Stop while a reply is being written in the chat this tab shows (outputs: send, stop)."""
        running = self.stops.running(session_of(request))
        return gr.update(visible=not running), gr.update(visible=running)

    def stop(self, request: gr.Request) -> Any:
        """Stop the reply this tab shows (its other chats' replies and other sessions keep theirs).

        The notice is left alone when a reply was stopped: a queued one says "Stopped before the model
        started" at once, and an answer to this click arriving after it must not wipe that."""
        stopped = self.stops.stop(session_of(request))
        return gr.skip() if stopped else notice_html("Nothing to stop.")

    def stop_on_unload(self, request: gr.Request) -> None:
        """A closed or reloaded tab stops its reply (the page saved it as far as it got)."""
        self.stops.stop(session_of(request), everywhere=True, closed=True)

    # --- editing the chat ---------------------------------------------------------------------------------

    def undo(self, conversation: Conversation, chat_id: str, title: str, request: gr.Request) -> tuple[Any, ...]:
        """Remove the last exchange (the last question and everything after it: answer, tool calls, results)."""
        last = last_question(conversation)
        if last is not None:
            del conversation.turns[last:]
        record = self._kept(self.chats(request), saved_form(conversation, chat_id, title))
        return conversation_messages(conversation), conversation, record

    def edit_last(self, message: str, conversation: Conversation, chat_id: str, request: gr.Request) -> tuple[Any, ...]:
        """Remove the last exchange and put its question back in the message box to be edited and sent.
        Refused while a reply is being written in this chat (what is typed in the box stays).

        Outputs: chat, message box, notice, conversation, record, and the edit's marker (``edit_marker``),
        which the page keeps in the tab so that a reload before sending picks the edit up again."""
        if self.stops.running(session_of(request)):
            return gr.skip(), message, notice_html(BUSY), conversation, gr.skip(), gr.skip()
        last = last_question(conversation)
        if last is None:
            notice = notice_html("There is no message to edit yet.")
            return gr.skip(), message, notice, conversation, gr.skip(), gr.skip()
        question = conversation.turns[last].content
        marker = edit_marker(chat_id, last, question)
        hold_pending_edit(conversation, last)
        del conversation.turns[last:]
        # Not saved until the edited question is sent (it keeps the old one as a version then): a reload or
        # another chat opened meanwhile finds the exchange still there, not lost with this tab's state.
        return conversation_messages(conversation), question, "", conversation, gr.skip(), marker

    def switch_version(
        self, request_text: str, conversation: Conversation, chat_id: str, title: str, request: gr.Request
    ) -> tuple[Any, ...]:
        """Show another version of a message; ``request_text`` is "TURN:STEP" (from the arrows in the
        chat, STEP -1 or +1). Outputs: chat, record, notice."""
        turn_text, _, step_text = (request_text or "").partition(":")
        if not turn_text.isdigit() or step_text not in ("-1", "1"):
            return gr.skip(), gr.skip(), gr.skip()
        return self._switch(int(turn_text), int(step_text), conversation, chat_id, title, self.chats(request))

    def _switch(
        self, index: int, step: int, conversation: Conversation, chat_id: str, title: str, chats: Chats
    ) -> tuple[Any, ...]:
        turn = conversation.turns[index] if 0 <= index < len(conversation.turns) else None
        if turn is None or len(turn.versions) < 2:
            return gr.skip(), gr.skip(), notice_html("That message has no other version (the chat changed?).")
        show_version(conversation, index, (turn.version + step) % len(turn.versions))
        return conversation_messages(conversation), self._kept(chats, saved_form(conversation, chat_id, title)), ""

    def previous_answer(
        self, conversation: Conversation, chat_id: str, title: str, request: gr.Request
    ) -> tuple[Any, ...]:
        """The previous version of the last answer; outputs chat, record, notice."""
        return self._switch(len(conversation.turns) - 1, -1, conversation, chat_id, title, self.chats(request))

    def next_answer(self, conversation: Conversation, chat_id: str, title: str, request: gr.Request) -> tuple[Any, ...]:
        return self._switch(len(conversation.turns) - 1, 1, conversation, chat_id, title, self.chats(request))

    # --- chats: new, open, rename, delete and undo --------------------------------------------------------

    def new_chat(self, system_prompt: str, request: gr.Request) -> tuple[Any, ...]:
        """A fresh chat in this tab; a reply still running in the old one goes on there and is saved."""
        self.stops.detach(session_of(request), STOP_WAIT_SECONDS)
        fresh = Conversation(system_prompt.strip())
        return [], fresh, new_chat_id(), "", "", as_text(saved_form(fresh, ""))

    def open_chat(self, chosen: str, saved: str, conversation: Conversation, request: gr.Request) -> tuple[Any, ...]:
        """Show the chat ``chosen`` in the list (``saved``: what the page holds of it, as JSON: the chat itself
        when the browser keeps the chats)."""
        chats = self.chats(request)
        session = session_of(request)
        # A reply that ended after this tab left its chat: its last save, if the page has not written it yet.
        record = self.stops.newer_than_page(session, chosen, chats.load(chosen, from_text(saved)))
        if not chosen or not isinstance(record, dict):
            notice = notice_html(f"That chat is no longer saved {chats.where} (deleted in another tab?).")
            return gr.skip(), conversation, gr.skip(), gr.skip(), notice, gr.skip()
        self.stops.detach(session, STOP_WAIT_SECONDS)  # a reply running here goes on, saved, not drawn
        try:
            check_chat_size(record, self.app.settings.max_chat_mb)
            opened = from_saved_form(record, "")
        except ChatbotError as error:
            return gr.skip(), conversation, gr.skip(), gr.skip(), notice_html(error), gr.skip()
        title = str(record.get("title") or "")
        running = self.stops.attach(session, chosen)
        if running is not None and running.conversation is not None:
            # Its reply is still being written: shown as saved so far, then drawn live again from its next piece.
            return conversation_messages(opened), running.conversation, chosen, title, "", opened.system_prompt
        return conversation_messages(opened), opened, chosen, title, "", opened.system_prompt

    def rename(self, new_title: str, conversation: Conversation, chat_id: str, request: gr.Request) -> tuple[Any, ...]:
        """Outputs: title, rename box, record, notice."""
        title = " ".join(new_title.split())[:120]
        if not conversation.turns:
            return gr.skip(), gr.skip(), gr.skip(), notice_html("Send a message first: an empty chat is not saved.")
        return title, "", self._kept(self.chats(request), saved_form(conversation, chat_id, title)), ""

    def delete(self, conversation: Conversation, chat_id: str, title: str, request: gr.Request) -> tuple[Any, ...]:
        """Delete this tab's chat (its reply, if running, is dropped); Undo brings it back.

        Outputs: chat, conversation, chat id, title, record, deleted id, kept-for-undo, undo button.
        """
        self.stops.stop_and_wait(session_of(request), STOP_WAIT_SECONDS, drop=True)
        self.chats(request).delete(chat_id)
        kept = saved_form(conversation, chat_id, title) if conversation.turns else None
        fresh = Conversation(conversation.system_prompt)
        undo = gr.update(visible=kept is not None)
        return [], fresh, new_chat_id(), "", as_text(saved_form(fresh, "")), chat_id, kept, undo

    def undo_delete(self, kept: Any, request: gr.Request) -> tuple[Any, ...]:
        """Bring the last deleted chat back (outputs: chat, conversation, chat id, title, record, undo button)."""
        if not isinstance(kept, dict):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.update(visible=False)
        self.stops.detach(session_of(request), STOP_WAIT_SECONDS)
        restored = from_saved_form(kept, "")
        title = str(kept.get("title") or "")
        record = saved_form(restored, str(kept["id"]), title) | {"undeleted": True}  # the page lifts its tombstone
        record_text = self._kept(self.chats(request), record)
        return conversation_messages(restored), restored, kept["id"], title, record_text, gr.update(visible=False)

    # --- page load, chat list, settings -------------------------------------------------------------------

    def restore(self, saved: str, draft: str, system_prompt: str, editing: str, request: gr.Request) -> tuple[Any, ...]:
        """On page load: this tab's chat and its unsent text, or a fresh chat. ``saved``: what the page holds of
        the tab's chat, as JSON (the chat itself when the browser keeps the chats, else its id); ``editing``: the
        tab's Edit last marker (``edit_marker``), if an edited question was not sent before the reload.

        Outputs: chat, system prompt, conversation, chat id, title, message box, notice.
        """
        sent = from_text(saved)
        record = self.chats(request).load(str(sent.get("id") or ""), sent) if isinstance(sent, dict) else None
        if isinstance(record, dict) and record.get("id"):
            try:
                check_chat_size(record, self.app.settings.max_chat_mb)
            except ChatbotError as error:  # the chat stays in the browser; this tab starts a new one
                return (
                    [],
                    gr.skip(),
                    Conversation(system_prompt.strip()),
                    new_chat_id(),
                    "",
                    draft or "",
                    notice_html(error),
                )
            try:
                conversation = from_saved_form(record, system_prompt.strip())
                title = str(record.get("title") or "")
                # The question being edited is still in the box: the chat is shown without it again, and says so.
                resumed = bool(draft) and resume_pending_edit(conversation, str(record["id"]), editing)
                return (
                    conversation_messages(conversation),
                    conversation.system_prompt,
                    conversation,
                    str(record["id"]),
                    title,
                    draft or "",
                    info_html(EDITING) if resumed else "",
                )
            except ChatbotError:
                pass  # storage from an older version: start afresh
        return [], gr.skip(), Conversation(system_prompt.strip()), new_chat_id(), "", draft or "", ""

    def chat_list(self, index_text: str, chat_id: str, request: gr.Request) -> Any:
        """The sidebar's list of saved chats, newest first. ``index_text``: the page's own index (JSON [[title,
        id], ...]) when the browser keeps the chats, else {"query": the search box's text}."""
        choices = self.chats(request).index(from_text(index_text))
        ids = {key for _, key in choices}
        return gr.update(choices=choices, value=chat_id if chat_id in ids else None)

    def context_meter(
        self,
        message: str,
        system_prompt: str,
        enable_thinking: bool,
        max_new_tokens: float,
        conversation: Conversation,
        attached: Any = None,
    ) -> str:
        """Tokens of the system prompt, the chat and the typed message (with the files ``attached`` to it) against
        the context window (counted by the model's tokenizer); over it, whether the oldest turns will be left
        out or the message refused."""
        loaded = self.app.backend.loaded
        if loaded is None:
            return ""
        message = compose(message, attachments_of(attached))
        probe = Conversation(system_prompt.strip(), conversation.turns)
        context = loaded.max_context
        reply_room = min(int(max_new_tokens), max_new_tokens_bound(context))
        try:
            messages = normalize_messages(probe.messages_with(message if message.strip() else "…"))
            # Certainly over (no tokenizing on each keystroke), or counted: either way, the same rule as a reply's.
            used = len(encode(loaded.tokenizer, messages, enable_thinking)) if could_fit(messages, context) else None
            if used is None or used + reply_room > context:
                build_prompt(
                    loaded.tokenizer,
                    messages,
                    enable_thinking=enable_thinking,
                    max_context=context,
                    max_new_tokens=reply_room,
                )
        except ChatbotError as error:  # the message would be refused
            text = error.message + (f" {error.fix}" if error.fix else "")
            return f'<span class="qc-meter qc-meter-over">{html.escape(text)}</span>'
        if used is None:
            over = "over the context window · oldest turns will be left out"
            return f'<span class="qc-meter qc-meter-over">{over}</span>'
        level = "over" if used + reply_room > context else "near" if used > context * 0.75 else "ok"
        note = " · oldest turns will be left out" if level == "over" else ""
        return (
            f'<span class="qc-meter qc-meter-{level}" '
            'title="prompt tokens (system prompt + chat + message) / context window">'
            f"{used:,} / {context:,} tokens{note}</span>"
        )

    def max_tokens_controls(self, max_new_tokens: float, min_new_tokens: float) -> tuple[Any, Any]:
        """The max/min new tokens sliders bounded by the loaded model's context."""
        limit = self.max_new_tokens_limit()
        if limit is None:
            return gr.skip(), gr.skip()
        return (
            gr.update(maximum=limit, value=min(max_new_tokens, limit)),
            gr.update(maximum=limit, value=min(min_new_tokens, limit)),
        )

    def model_status(self) -> str:
        """The precision badge as HTML (mode, reason, device, weights' memory, or loading progress)."""
        return badge_html(self.app.backend.status(), demo=self.app.settings.demo)

    def poll_model_status(self, max_new_tokens: float, min_new_tokens: float) -> tuple[Any, ...]:
        """The badge, the timer switched off once loading has ended, and the bounded token sliders."""
        status = self.app.backend.status()
        sliders = self.max_tokens_controls(max_new_tokens, min_new_tokens)
        badge = badge_html(status, demo=self.app.settings.demo)
        return badge, gr.Timer(active=not status.settled), *sliders

    def follow_mode(self, enable_thinking: bool, temperature: float, top_p: float, top_k: float) -> tuple[Any, ...]:
        """Switch sampling to the new mode's defaults, unless the user has chosen their own values."""
        if not is_mode_default({"temperature": temperature, "top_p": top_p, "top_k": top_k}):
            return gr.skip(), gr.skip(), gr.skip()
        defaults = THINKING_DEFAULTS if enable_thinking else NON_THINKING_DEFAULTS
        return defaults["temperature"], defaults["top_p"], defaults["top_k"]

    def reset_sampling(self, enable_thinking: bool) -> tuple[Any, ...]:
        defaults = THINKING_DEFAULTS if enable_thinking else NON_THINKING_DEFAULTS
        limit = self.max_new_tokens_limit() or DEFAULT_MAX_NEW_TOKENS
        max_tokens = min(DEFAULT_MAX_NEW_TOKENS, limit)
        return defaults["temperature"], defaults["top_p"], defaults["top_k"], max_tokens, 0.0, 1.0, 0


def as_text(data: Any) -> str:
    """JSON for the page's hidden text fields (a textarea costs the page nothing to update, a JSON viewer does)."""
    return json.dumps(data, ensure_ascii=False)


def from_text(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def _starts_a_part(event: ChatEvent, live: LiveReply) -> bool:
    """The first piece of the thinking or of the answer: always shown at once, however fast the model."""
    first_thought = isinstance(event, ThinkingDelta) and not live.thinking
    return first_thought or (isinstance(event, AnswerDelta) and not live.answer)


def session_of(request: gr.Request) -> str:
    """The browser session's hash (Gradio sets it on every event from a page)."""
    return request.session_hash or ""


class StreamPace:
    """When a streaming reply next draws on the screen (``stream_interval``) and next saves to the tab's
    storage (``SAVE_INTERVAL_SECONDS``): a new reply's and a continued one's loops keep the same pace."""

    def __init__(self) -> None:
        self.next_draw = self.next_save = 0.0

    def draw_due(self, now: float, live: LiveReply, *, at_once: bool = False) -> bool:
        """Whether to draw now (``at_once``: the first piece of a part, drawn without waiting)."""
        if now < self.next_draw and not at_once:
            return False
        self.next_draw = now + stream_interval(live.thinking, live.answer)
        return True

    def save_due(self, now: float) -> bool:
        """Whether this draw also saves (asked only when a draw is due)."""
        if now < self.next_save:
            return False
        self.next_save = now + SAVE_INTERVAL_SECONDS
        return True


def stream_interval(*shown: str) -> float:
    """Seconds until a streaming reply's next screen update: ``STREAM_INTERVAL_SECONDS``, longer once the reply
    (``shown``: its thinking and answer) is long enough that drawing it again costs the page more."""
    return max(STREAM_INTERVAL_SECONDS, sum(len(text) for text in shown) / REDRAW_CHARACTERS_PER_SECOND)
