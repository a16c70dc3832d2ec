"""Continue: the web chat's last answer, cut at the max new tokens limit (or stopped, or interrupted), written
on from where it ended; the same message grows (as Open WebUI's "Continue Response" and LM Studio's
"Continue" do).

The request is the chat so far with the cut answer as the last message, its thinking included: the engine
continues that assistant turn instead of starting a new one (``ChatRequest.continue_final_message``), in
its thinking if it was cut there. The reply may take the room the context has left after the question and
the cut answer (older turns are left out first, as for any reply); with no room left it is refused,
saying so. ``continue_reply(handlers)`` is the event's function (wired in ``ui.py``, /continue_reply).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import gradio as gr

from ..chat.conversation import Conversation, Turn
from ..chat.events import ChatDone, ChatEvent, Loading
from ..chat.prompt import encode, normalize_messages
from ..chat.request import ChatRequest
from ..errors import ChatbotError
from .session_quota import web_client
from .ui_handlers import (
    BUSY,
    LEAVE_THE_PAGE_ALONE,
    ChatHandlers,
    ReplyInputs,
    StreamPace,
    as_text,
    notice_html,
    session_of,
)
from .ui_render import LiveReply, conversation_messages
from .ui_session import saved_form

MIN_ROOM_TOKENS = 16  # fewer tokens of room than this and a continuation is refused: the context is full
NO_ROOM = (
    "This answer fills the context window ({used:,} of {context:,} tokens with its question): it cannot go on. "
    "Start a new chat and ask for the rest there."
)


def why_not(conversation: Conversation) -> str:
    """What stops the last answer from being continued ("" when nothing does)."""
    turns = conversation.turns
    if not turns or turns[-1].role != "assistant":
        return "There is no answer to continue (Continue writes on from the last answer where it was cut)."
    if turns[-1].tool_calls:
        return "An answer that called a tool cannot be continued; send the tool's result or a new message."
    if not (turns[-1].content or turns[-1].thinking):
        return "The last answer is empty: use Regenerate to answer again."
    return ""


def continued_messages(conversation: Conversation) -> list[dict[str, Any]]:
    """The chat as sent to continue its last answer: that answer last, with its thinking."""
    turns = conversation.turns
    head = [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt else []
    last = turns[-1]
    cut: dict[str, Any] = {"role": "assistant", "content": last.content}
    if last.thinking:
        cut["reasoning_content"] = last.thinking
    return [*head, *(turn.message() for turn in turns[:-1]), cut]


def room_left(handlers: ChatHandlers, messages: list[dict[str, Any]], thinking: bool) -> tuple[int, int] | None:
    """(tokens the question and the cut answer take, the context) by the model's tokenizer; None without one."""
    loaded = handlers.app.backend.loaded
    if loaded is None:
        return None
    clean = normalize_messages(messages)
    question = max((i for i, m in enumerate(clean) if m["role"] == "user"), default=0)
    kept = [m for m in clean[:1] if m["role"] == "system"] + clean[question:]
    return len(encode(loaded.tokenizer, kept, thinking)), loaded.max_context


class ContinuedReply(LiveReply):
    """``LiveReply`` seeded with the answer it continues: what streams is added to it, and the stats
    add up (tokens and thinking time of both parts; speed and finish of the new part)."""

    def __init__(self, before: Turn) -> None:
        super().__init__()
        self.before = before
        self.thinking, self.answer = before.thinking, before.content
        if before.content or not before.thinking:  # cut in its answer: the thinking is over
            self.thinking_seconds = float(before.stats.get("thinking_seconds", 0.0))

    def apply(self, event: ChatEvent) -> None:
        super().apply(event)
        if isinstance(event, ChatDone):
            self.thinking = self.before.thinking + event.thinking
            self.answer = self.before.content + event.answer

    @property
    def stats(self) -> dict[str, Any]:
        stats = super().stats
        if not stats:
            return {}
        old = self.before.stats
        tokens = int(old.get("new_tokens", 0)) + int(stats.get("new_tokens", 0))
        thought = float(stats.get("thinking_seconds", 0.0))
        if not self.before.content and self.before.thinking:  # both parts thought
            thought += float(old.get("thinking_seconds", 0.0))
        return {**stats, "new_tokens": tokens, "thinking_seconds": round(thought, 2)}


def continue_reply(handlers: ChatHandlers):
    """The Continue event's function for ``handlers`` (outputs as every reply's: chat, message box, notice,
    conversation, record)."""

    def continue_last_answer(inputs: ReplyInputs, request: gr.Request) -> Iterator[tuple[Any, ...]]:
        conversation, chat_id = inputs.conversation, inputs.chat_id
        lost = handlers.session_lost(conversation, chat_id)
        if lost is not None:
            yield gr.skip(), gr.skip(), lost, conversation, gr.skip()
            return
        session = session_of(request)
        problem = why_not(conversation) or (BUSY if handlers.stops.running(session) else "")
        if problem:
            yield gr.skip(), gr.skip(), notice_html(problem), conversation, gr.skip()
            return
        conversation.system_prompt = inputs.system_prompt.strip()
        options = handlers._options(inputs)
        messages = continued_messages(conversation)
        try:
            used = room_left(handlers, messages, inputs.enable_thinking)
        except ChatbotError as error:
            yield gr.skip(), gr.skip(), notice_html(error), conversation, gr.skip()
            return
        if used is not None:
            room = used[1] - used[0]
            if room < MIN_ROOM_TOKENS:
                full = notice_html(NO_ROOM.format(used=used[0], context=used[1]))
                yield gr.skip(), gr.skip(), full, conversation, gr.skip()
                return
            options["max_new_tokens"] = min(options["max_new_tokens"], room)
            options["min_new_tokens"] = min(options["min_new_tokens"], options["max_new_tokens"])
        yield from _stream(handlers, inputs, messages, options, session, web_client(request))

    continue_last_answer.__name__ = "continue_reply"
    return continue_last_answer


def _stream(
    handlers: ChatHandlers,
    inputs: ReplyInputs,
    messages: list[dict[str, Any]],
    options: dict[str, Any],
    session: str,
    client: str,
) -> Iterator[tuple[Any, ...]]:
    conversation, chat_id, title = inputs.conversation, inputs.chat_id, inputs.title
    turn = conversation.turns[-1]
    earlier = conversation_messages(Conversation(conversation.system_prompt, conversation.turns[:-1]))
    live = ContinuedReply(turn)

    def record(tokens: int | None) -> str:
        """The chat saved while the answer grows (marked interrupted until it ends, for a reload)."""
        stats = {**turn.stats, "finish_reason": "interrupted"} | ({"new_tokens": tokens} if tokens else {})
        grown = replace(turn, content=live.answer, thinking=live.thinking, stats=stats)
        line = Conversation(conversation.system_prompt, [*conversation.turns[:-1], grown])
        text = as_text(saved_form(line, chat_id, title))
        return stop.saving(text) if stop is not None else text  # (called only once ``stop`` is set)

    with handlers.stops.reply(session, chat_id, conversation) as stop:
        if stop is None:
            yield gr.skip(), gr.skip(), notice_html(BUSY), conversation, gr.skip()
            return
        with stop.drawing() as shown_here:
            if shown_here:
                yield [*earlier, *live.messages()], gr.skip(), "", conversation, gr.skip()
            else:  # the tab left this chat as Continue was pressed (``StopSignals.detach``): not drawn
                yield (gr.skip(),) * 5
        try:
            backend = handlers.app.backend
            request = ChatRequest.build(
                messages,
                enable_thinking=inputs.enable_thinking,
                client=client,
                limits=backend.limits,
                continue_final_message=True,
                **options,
            )
            pace = StreamPace()
            for event in backend.stream(request, stop):
                if stop.is_set() and isinstance(event, Loading):
                    break
                live.apply(event)
                now = time.perf_counter()
                if stop.discarded == "dropped" or live.done is not None or not pace.draw_due(now, live):
                    continue
                saving = pace.save_due(now)
                saved = record(handlers._tokens_so_far(live)) if saving else gr.skip()
                with stop.drawing() as shown_here:
                    if shown_here:
                        yield [*earlier, *live.messages()], gr.skip(), gr.skip(), conversation, saved
                    elif saving:
                        yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), saved
        except ChatbotError as error:
            if stop.discarded == "dropped":
                yield LEAVE_THE_PAGE_ALONE
                return
            with stop.drawing() as shown_here:
                shown = conversation_messages(conversation) if shown_here else gr.skip()
                yield shown, gr.skip(), notice_html(error) if shown_here else gr.skip(), conversation, gr.skip()
            return
        if stop.discarded == "dropped":
            yield LEAVE_THE_PAGE_ALONE
            return
        if live.done is not None and (live.done.thinking or live.done.answer):
            interrupted = stop.interrupted(live.done.finish_reason)
            turn.content, turn.thinking = live.answer, live.thinking
            turn.stats = live.stats | ({"finish_reason": "interrupted"} if interrupted else {})
        saved = stop.saving(as_text(saved_form(conversation, chat_id, title)))
        with stop.drawing() as shown_here:
            if not shown_here:
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), saved
                return
            yield conversation_messages(conversation), gr.skip(), "", conversation, saved
