"""What the web UI shows, as plain values: chat messages, the live reply, stats, the precision badge.

Pure functions and one small accumulator (``LiveReply``), kept apart from the Gradio wiring in
``ui.py`` so they can be tested without a browser. Every message is a fresh dict in Gradio's
"messages" format; a thinking block is an assistant message with ``metadata`` (title, status,
duration), which Gradio draws as a collapsible block.

Text from users, the model and imported files is sent as written (so the copy buttons copy the
Markdown source). The Chatbot shows every tag that is not HTML's own (``<think>``, ``List<T>``,
``cp <src> <dest>``) as text and sanitizes HTML's own; the page's policy keeps what it leaves from
loading anything from elsewhere (``ui.py``, ``security.PagePolicy``): markup in a message is never run.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..chat.backend import BackendStatus
from ..chat.conversation import Conversation, Turn
from ..chat.events import AnswerDelta, ChatDone, ChatEvent, Loading, QueuePosition, ThinkingDelta
from .attachments import describe_size, fence_language, split
from .remote_view import remote_badge_html
from .ui_actions import turn_actions
from .ui_styles import without_positioning
from .ui_versions import version_nav

STATS_CLASS = "qc-stats"
TITLE_PREVIEW = 80  # characters of a tool call's arguments or result shown in its folded block's title
# A reply saved mid-stream shows its speed only after this long: tokens that arrive together would read as
# thousands a second (seen: "10810 tokens/s" for 4 tokens).
MIN_SPEED_SECONDS = 0.25
ATTACHMENT_SHOWN_CHARS = 20_000  # of an attached file's text drawn in its folded block (the model reads it all)
Message = dict[str, Any]
# The Prism grammar bundled for ```cpp extends the C one but Gradio does not load C first (PrismJS
# issue 3029): the whole message fails to draw. "c++" is drawn as plain code and keeps the meaning.
CPP_FENCE_RE = re.compile(r"^( {0,3}(?:`{3,}|~{3,})[ \t]*)cpp\b", re.MULTILINE | re.IGNORECASE)


# Code (fenced blocks, inline spans) is left as written; math is only looked for outside it.
CODE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^ {0,3}\1[ \t]*$|\Z)|(`+).+?\2", re.MULTILINE | re.DOTALL)
# Inline math between single dollars, by Pandoc's rule: the opening "$" has a non-space right after it,
# the closing one a non-space right before it and no digit after it. So "$x^2$" is math and
# "$5 and $10" is text; "$$" (display math) and an escaped "\$" are left alone.
DOLLAR_MATH_RE = re.compile(r"(?<![\\$])\$(?![\s$])((?:\\.|[^$\\\n])+?)(?<![\s\\])\$(?![\d$])")


def inline_math(text: str) -> str:
    """``text`` with each ``$...$`` that is math written ``\\(...\\)``, the page's inline delimiter; other
    dollars (prices, amounts) stay text. Code is not touched."""
    if "$" not in text:
        return text
    parts, start = [], 0
    for code in CODE_RE.finditer(text):
        parts += [DOLLAR_MATH_RE.sub(r"\\(\1\\)", text[start : code.start()]), code.group(0)]
        start = code.end()
    parts.append(DOLLAR_MATH_RE.sub(r"\\(\1\\)", text[start:]))
    return "".join(parts)


def shown_markdown(text: str) -> str:
    """The Markdown the page draws for ``text``: fences that break Gradio's highlighter renamed, inline
    ``$...$`` math in the page's own delimiters, positioning styles taken out of its HTML (``ui_styles``)."""
    return without_positioning(inline_math(CPP_FENCE_RE.sub(r"\1c++", text)))


# --- messages ---------------------------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    if seconds < 0.05:
        return "under 0.1 s"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def user_message(text: str) -> Message:
    return {"role": "user", "content": shown_markdown(text)}


def user_messages(text: str) -> list[Message]:
    """A question as drawn: each attached file folded under its name (``attachments``), then the typed text."""
    typed, files = split(text)
    drawn = []
    for item in files:
        shown = item.text[:ATTACHMENT_SHOWN_CHARS]
        if len(item.text) > len(shown):
            shown += f"\n… ({len(item.text) - len(shown):,} more characters, all read by the model)"
        fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", shown)), default=0) + 1)
        name = re.sub(r"([\\`*_\[\]<>#|~$])", r"\\\1", item.name)  # a name, not Markdown or math
        title = f"{name} · {describe_size(item.text)}"  # after a paperclip (attach.css)
        content = f"{fence}{fence_language(item.name)}\n{shown}\n{fence}"
        drawn.append({"role": "user", "content": content, "metadata": {"title": title, "status": "done"}})
    return [*drawn, user_message(typed)] if typed.strip() or not files else drawn


def answer_message(text: str) -> Message:
    return {"role": "assistant", "content": shown_markdown(text)}


def thinking_message(text: str, seconds: float, *, done: bool, ended: str = "") -> Message:
    """The collapsible thinking block: open with a spinner while pending, closed once done.

    ``ended`` says why thinking ended without an answer: "stopped", "cut" (max tokens) or "interrupted".
    """
    metadata: dict[str, Any]
    if not done:
        metadata = {"title": "Thinking…", "status": "pending"}
    else:
        notes = {"stopped": " (stopped)", "cut": " (cut at the max new tokens limit)", "interrupted": " (interrupted)"}
        note = notes.get(ended, "")
        title = f"Thought for {format_seconds(seconds)}{note}"
        metadata = {"title": title, "status": "done", "duration": round(seconds, 1)}
    return {"role": "assistant", "content": shown_markdown(text), "metadata": metadata}


def tool_call_message(call: dict[str, Any]) -> Message:
    """A tool call as a folded block: "Tool call: name · {args}" as its title, the arguments laid out inside."""
    given = call.get("function")
    function: dict[str, Any] = given if isinstance(given, dict) else {}
    name = str(function.get("name") or "a tool")
    arguments = function.get("arguments", "")
    title = f"Tool call: {name}" + (f" · {one_line(arguments)}" if arguments not in ("", "{}") else "")
    return {"role": "assistant", "content": laid_out(arguments), "metadata": {"title": title, "status": "done"}}


def tool_result_message(text: str, name: str) -> Message:
    """A tool's result as a folded block titled with the tool's name and the start of the result."""
    title = f"Tool result: {name or 'tool'}" + (f" · {one_line(text)}" if text.strip() else " (empty)")
    return {"role": "assistant", "content": laid_out(text), "metadata": {"title": title, "status": "done"}}


def one_line(value: Any, width: int = TITLE_PREVIEW) -> str:
    """``value`` (text, or JSON text written compactly) on one line, cut to ``width`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    with contextlib.suppress(ValueError, TypeError):  # JSON text is written compactly, other text as it is
        text = json.dumps(json.loads(text), ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def laid_out(value: Any) -> str:
    """Markdown for a tool call's arguments or a result: JSON indented in a code block, other text as written."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        return shown_markdown(text)
    code = json.dumps(data, ensure_ascii=False, indent=2)
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", code)), default=0) + 1)
    return f"{fence}json\n{code}\n{fence}"


def stats_message(
    text: str, navs: tuple[str, ...] = (), actions: tuple[str, ...] = (), *, live: bool = False
) -> Message:
    """The small line under an answer (status while it streams, ``live``; stats once done), after its ``navs``,
    before its ``actions`` (``ui_actions``)."""
    shown = f'<span class="qc-live">{html.escape(text)}</span>' if live else html.escape(text)
    parts = [*navs, shown, *actions] if text else [*navs, *actions]
    return {"role": "assistant", "content": f'<span class="{STATS_CLASS}">{" · ".join(parts)}</span>'}


def version_nav_html(turn_index: int, turn: Turn) -> str:
    """The "‹ answer 2 of 3 ›" switch: the page's script turns a click on an arrow into a switch of turn ``turn_index``.

    The turn and the direction are class names: Gradio's sanitizer keeps classes, not data attributes.
    """
    what = "question" if turn.role == "user" else "answer"
    arrow = '<span class="qc-ver-step qc-step-{0} qc-turn-{1}" title="{2} version">{3}</span>'
    return (
        f'<span class="qc-ver">{arrow.format("prev", turn_index, "previous", "‹")}'
        f" {what} {turn.version + 1} of {len(turn.versions)} "
        f"{arrow.format('next', turn_index, 'next', '›')}</span>"
    )


def is_stats_message(message: dict[str, Any]) -> bool:
    content = message.get("content")
    if isinstance(content, list):  # gradio_client returns contents as [{"type": "text", "text": ...}]
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return isinstance(content, str) and f'class="{STATS_CLASS}"' in content


def format_stats(stats: dict[str, Any]) -> str:
    """ "0.21 s to first token · 35.2 tokens/s · 42 tokens", plus how the reply ended when unusual."""
    parts = []
    if stats.get("new_tokens") and "time_to_first_token" in stats:  # (a reply saved mid-way may lack its times)
        parts.append(f"{stats['time_to_first_token']:.2f} s to first token")
        if "tokens_per_second" in stats:
            parts.append(f"{stats['tokens_per_second']:.1f} tokens/s")
    tokens = stats.get("new_tokens", 0)
    parts.append(f"{tokens} token" + ("" if tokens == 1 else "s"))
    if stats.get("queue_seconds", 0.0) >= 0.5:
        parts.append(f"waited {format_seconds(stats['queue_seconds'])} in the queue")
    finish = stats.get("finish_reason")
    if finish == "cancelled":
        parts.append("stopped")
    elif finish == "interrupted":
        parts.append("interrupted: the page was closed or reloaded, or the server stopped, during the reply")
    elif finish == "length" and stats.get("time_limited"):
        parts.append("cut at the server's time limit for one reply")
    elif finish == "length":
        parts.append("cut at the max new tokens limit")
    if stats.get("dropped_messages"):
        parts.append(f"{stats['dropped_messages']} oldest messages left out to fit the context")
    return " · ".join(parts)


def turn_messages(
    turn: Turn, navs: tuple[str, ...] = (), tool_name: str = "", actions: tuple[str, ...] = ()
) -> list[Message]:
    """One turn's messages; ``navs``: version switches shown in its stats line (see ``ui_versions``);
    ``tool_name``: for a tool's result, the tool that gave it; ``actions``: drawn at the end of its stats line."""
    if turn.role == "user":
        return [*user_messages(turn.content), *([stats_message("", navs)] if navs else [])]
    if turn.role == "tool":
        return [tool_result_message(turn.content, tool_name)]
    messages = []
    if turn.thinking:
        seconds = float(turn.stats.get("thinking_seconds", 0.0))
        messages.append(thinking_message(turn.thinking, seconds, done=True, ended=ended_without_answer(turn)))
    if turn.content:
        messages.append(answer_message(turn.content))
    messages += [tool_call_message(call) for call in turn.tool_calls if isinstance(call, dict)]
    if turn.stats or navs:
        messages.append(stats_message(format_stats(turn.stats) if turn.stats else "", navs, actions))
    return messages


def ended_without_answer(turn: Turn) -> str:
    """Why a reply has thinking but no answer ("" when it has one or ended normally)."""
    if turn.content:
        return ""
    return {"cancelled": "stopped", "length": "cut", "interrupted": "interrupted"}.get(
        str(turn.stats.get("finish_reason", "")), ""
    )


def conversation_messages(conversation: Conversation) -> list[Message]:
    """The whole history as chat messages (earlier thinking stays, collapsed), version switches included."""
    return [message for _, message in indexed_messages(conversation)]


def indexed_messages(conversation: Conversation) -> list[tuple[int, Message]]:
    """``conversation_messages`` with the index of the turn each message draws (to map a click back)."""
    navs: dict[int, list[str]] = {}
    for index, shown_at in version_nav(conversation).items():
        navs.setdefault(shown_at, []).append(version_nav_html(index, conversation.turns[index]))
    names = {
        str(call.get("id")): str((call.get("function") or {}).get("name") or "")
        for turn in conversation.turns
        for call in turn.tool_calls
        if isinstance(call, dict) and isinstance(call.get("function") or {}, dict)
    }
    actions = turn_actions(conversation)
    return [
        (index, message)
        for index, turn in enumerate(conversation.turns)
        for message in turn_messages(
            turn, tuple(navs.get(index, ())), names.get(turn.tool_call_id, ""), tuple(actions.get(index, ()))
        )
    ]


# --- the reply being streamed -----------------------------------------------------------------------------


@dataclass
class LiveReply:
    """Collects one reply's events; ``messages()`` draws it as it stands."""

    started: float = field(default_factory=time.perf_counter)
    thinking: str = ""
    answer: str = ""
    status: str = "Waiting for the model…"
    thinking_started: float | None = None
    thinking_seconds: float | None = None
    first_text: float | None = None  # when the first thinking or answer text came
    done: ChatDone | None = None

    def apply(self, event: ChatEvent) -> None:
        now = time.perf_counter()
        if isinstance(event, (ThinkingDelta, AnswerDelta)) and self.first_text is None:
            self.first_text = now
        if isinstance(event, Loading):
            self.status = f"Loading the model… {event.fraction:.0%} ({event.stage})"
        elif isinstance(event, QueuePosition) and event.paused:
            self.status = "Paused to give someone else a turn; your reply goes on from here in a moment"
        elif isinstance(event, QueuePosition):
            self.status = f"In the queue: position {event.position} (the model is answering someone else)"
        elif isinstance(event, ThinkingDelta):
            if self.thinking_started is None:
                self.thinking_started = now
            self.thinking += event.text
            self.status = "Thinking…"
        elif isinstance(event, AnswerDelta):
            self._end_thinking(now)
            self.answer += event.text
            self.status = "Writing…"
        elif isinstance(event, ChatDone):
            self._end_thinking(now)
            self.done = event
            self.thinking, self.answer = event.thinking, event.answer

    def _end_thinking(self, now: float) -> None:
        if self.thinking_started is not None and self.thinking_seconds is None:
            self.thinking_seconds = now - self.thinking_started

    @property
    def stats(self) -> dict[str, Any]:
        """ChatDone's stats with what the UI adds: thinking time, finish reason, dropped messages."""
        if self.done is None:
            return {}
        return {
            **self.done.stats,
            "thinking_seconds": round(self.thinking_seconds or 0.0, 2),
            "finish_reason": self.done.finish_reason,
            "dropped_messages": self.done.dropped_messages,
        }

    def progress_stats(self, tokens: int | None) -> dict[str, Any]:
        """The stats of the reply as far as it got (``tokens`` so far, None when not counted): what is saved
        while it streams, so a reload shows its real time to first token, speed and thinking time."""
        if self.done is not None:
            return self.stats
        now = time.perf_counter()
        stats: dict[str, Any] = {"new_tokens": tokens} if tokens else {}
        if self.first_text is not None:
            stats["time_to_first_token"] = round(self.first_text - self.started, 2)
            writing = now - self.first_text
            if tokens and tokens > 1 and writing >= MIN_SPEED_SECONDS:  # not a few tokens that came at once
                stats["tokens_per_second"] = round((tokens - 1) / writing, 1)
        if self.thinking_started is not None:
            thought = self.thinking_seconds if self.thinking_seconds is not None else now - self.thinking_started
            stats["thinking_seconds"] = round(thought, 2)
        return stats

    def messages(self) -> list[Message]:
        """Fresh message dicts for this reply (never the same objects twice, so streaming diffs work)."""
        ended = ""
        if self.done is not None and not self.answer:
            ended = {"cancelled": "stopped", "length": "cut"}.get(self.done.finish_reason, "")
        messages = []
        if self.thinking:
            finished = self.thinking_seconds is not None or self.done is not None
            seconds = self.thinking_seconds or (time.perf_counter() - (self.thinking_started or self.started))
            messages.append(thinking_message(self.thinking, seconds, done=finished, ended=ended))
        if self.answer:
            messages.append(answer_message(self.answer))
        if self.done:
            messages.append(stats_message(format_stats(self.stats)))
        else:  # marked live: the page says so itself when the server goes out of reach (assets/chat.js)
            messages.append(stats_message(self.status, live=True))
        return messages


# --- precision badge --------------------------------------------------------------------------------------


def format_bytes(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


SHORT_REASON_CHARS = 60


def short_reason(reason: str) -> str:
    """The precision reason's first clause, without the mode's name: "FP16 fallback: no CUDA GPU (cpu) to run FP8
    matmuls, so ..." -> "no CUDA GPU (cpu) to run FP8 matmuls" (at most ``SHORT_REASON_CHARS`` characters)."""
    text = reason.split(": ", 1)[1] if ": " in reason[:48] else reason
    text = re.split(r", |; | \u2014 ", text, maxsplit=1)[0].strip()
    return text if len(text) <= SHORT_REASON_CHARS else text[: SHORT_REASON_CHARS - 1].rstrip() + "…"


def badge_html(backend: BackendStatus, *, demo: bool) -> str:
    """The precision badge: mode, reason, device and weights' memory; progress while loading; for a remote
    server, what it reported of itself."""
    if backend.remote is not None:
        return remote_badge_html(backend, backend.remote)
    demo_note = ""
    if demo or backend.generated:
        demo_note = '<span class="qc-badge-demo">demo model, random weights</span>'
    decision = backend.precision
    if decision is not None and backend.state != "failed":
        mode_class = "fp8" if decision.mode == "fp8" else "fallback" if "fallback" in decision.label else "plain"
        # Compact: the mode and one short reason; the device, the weights and the whole reason on a click.
        return (
            f'<details class="qc-badge qc-badge-{mode_class}" data-status="ready">'
            f'<summary title="Click for the details"><span class="qc-badge-mode">{html.escape(decision.label)}</span>'
            f'{demo_note}<span class="qc-badge-short">{html.escape(short_reason(decision.reason))}</span></summary>'
            f'<div class="qc-badge-more"><span class="qc-badge-device">'
            f"{html.escape(decision.device_name or decision.device)}"
            f" · weights {format_bytes(backend.weights_bytes or 0)}</span>"
            f'<div class="qc-badge-reason">{html.escape(decision.reason)}</div></div></details>'
        )
    if backend.state == "failed":
        error = (backend.error or "unknown error").split(" Fix: ")[0]
        what = "GPU fault: restart the server" if backend.device_fault else "model failed to load"
        return (
            '<div class="qc-badge qc-badge-failed" data-status="failed">'
            f'<span class="qc-badge-mode">{what}</span>'
            f'<div class="qc-badge-reason">{html.escape(error)}</div></div>'
        )
    stage, fraction = backend.stage, backend.fraction
    return (
        '<div class="qc-badge qc-badge-loading" data-status="loading">'
        f'<span class="qc-badge-mode">loading... {fraction:.0%}</span>{demo_note}'
        f'<span class="qc-badge-device">{html.escape(stage)}</span>'
        f'<div class="qc-progress"><div style="width: {fraction * 100:.0f}%"></div></div></div>'
    )
