"""``python -m chatbot chat``: a terminal chat. Thinking and answer are printed under their own labels.

Thinking is on by default, as in the web chat (``--no-think`` starts with it off). Commands, typed
alone on a line: /think and /no_think switch thinking for the next messages, /clear forgets the
history, /help lists the commands, /quit (or Ctrl-D) leaves. Inside a message, /think or /no_think
switches thinking for that message only (Qwen3's own soft switch). Ctrl+C stops the reply being
written and gives the prompt back; at the prompt, or while the model loads, it leaves. With
``--backend URL`` the replies come from that OpenAI-compatible server instead of a model loaded here.

On a terminal the prompt has line editing and history (the standard library's ``readline``: arrows,
Ctrl+A/E, ↑ for the previous lines of this session) and a progress bar is drawn while the model loads.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from ..chat.backend import Backend, BackendStatus
from ..chat.backends import backend_from_settings
from ..chat.bot import Qwen3ChatBot
from ..chat.events import AnswerDelta, ChatDone, ChatEvent, Loading, ThinkingDelta
from ..errors import ChatbotError
from ..settings import Settings

DIM, BOLD, RESET = ("\033[2m", "\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "", "")
HELP = """Commands (alone on a line):
  /think       think before answering (from the next message on)
  /no_think    answer without thinking (from the next message on)
  /clear       forget the history
  /help        this list
  /quit        leave (or Ctrl-D)
/think or /no_think inside a message switches thinking for that message only.
Arrows edit the line; up and down recall earlier lines."""
LOAD_POLL_SECONDS = 0.2
STOP_WAIT_SECONDS = 5.0  # at most, for a stopped reply's last decode step (then the prompt comes anyway)


def chat_loop(model: str, settings: Settings, think: bool = True) -> int:
    engine = backend_from_settings(settings, model)
    model = settings.backend or model
    try:
        return _converse(engine, model, settings, think)
    finally:
        # The engine's worker thread must not be inside torch when the interpreter exits (that aborts
        # the process with "terminate called without an active exception").
        engine.close()


def _converse(engine: Backend, model: str, settings: Settings, think: bool) -> int:
    bot = Qwen3ChatBot(engine=engine, system_prompt=settings.system_prompt, load="background")
    print(f"Chatting with {model}. Type /help for the commands.")
    editing = line_editing()
    try:
        show_loading(engine)
        bot.load()  # the precision line belongs before the first question, not after the first answer
    except ChatbotError as exc:
        print(f"error: {exc}")
        return 1
    except KeyboardInterrupt:  # Ctrl+C while loading: leave quietly (chat_loop stops the load)
        print()
        return 130
    print(f"{DIM}{bot.describe()}{RESET}")
    print(f"{DIM}Thinking is {'on' if think else 'off'} (/think, /no_think).{RESET}")
    if editing:
        print(f"{DIM}{editing}{RESET}")
    while True:
        try:
            print()  # the blank line outside the prompt: readline redraws a one-line prompt cleanly
            message = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        command = message.lower()
        if command in ("/quit", "/exit"):
            return 0
        if command in ("/help", "/?"):
            print(HELP)
            continue
        if command in ("/think", "/no_think"):
            think = command == "/think"
            print(f"(thinking {'on' if think else 'off'} from the next message)")
            continue
        if command == "/clear":
            bot.clear_history()
            print("(history cleared)")
            continue
        if not message:
            continue
        try:
            print_reply(bot, message, think)
        except KeyboardInterrupt:
            # The prompt comes once the engine has ended the reply: nothing it still logs or prints about
            # that reply lands in the middle of the next prompt, and the next message does not wait behind it.
            wait_until_idle(engine)
            print("\n(stopped)")
        except ChatbotError as exc:
            print(f"\nerror: {exc}")


def line_editing() -> str | None:
    """Give ``input()`` line editing and history on a terminal (GNU readline or libedit); returns a note
    when this Python has no ``readline`` module (Windows), None otherwise."""
    if not sys.stdin.isatty():
        return None  # piped input: nothing to edit, and no escape sequences in the output
    try:
        import readline  # noqa: F401  (importing it is what turns line editing on for input())
    except ImportError:
        return "No line editing or history here: this Python has no readline module."
    return None


def show_loading(backend: Backend, out: TextIO | None = None) -> None:
    """Draw a progress bar (on a terminal) until the backend's load ends, loaded or failed; the caller
    then learns how it ended from ``load()``. Ctrl+C raises KeyboardInterrupt as usual."""
    out = out or sys.stdout
    if not out.isatty():
        return
    while (status := backend.status()).state == "loading":
        out.write("\r" + progress_line(status) + "\x1b[K")
        out.flush()
        time.sleep(LOAD_POLL_SECONDS)
    if status.state == "ready":
        out.write("\r" + progress_line(status) + "\x1b[K")
    out.write("\n")
    out.flush()


def progress_line(status: BackendStatus, width: int | None = None) -> str:
    """``loading [#######.............]  35%  loading weights 10/28``, cut to the terminal's width."""
    width = width or shutil.get_terminal_size((80, 24)).columns
    fraction = 1.0 if status.state == "ready" else status.fraction
    cells = 24
    filled = round(cells * fraction)
    stage = status.stage or status.state
    line = f"loading [{'#' * filled}{'.' * (cells - filled)}] {fraction:4.0%}  {stage}"
    return line[: max(width - 1, 10)]


def wait_until_idle(backend: Backend, limit: float = STOP_WAIT_SECONDS) -> None:
    """Wait (at most ``limit`` s) until ``backend`` runs no reply."""
    deadline = time.monotonic() + limit
    while backend.status().queue.get("busy") and time.monotonic() < deadline:
        time.sleep(0.01)


def print_reply(bot: Qwen3ChatBot, message: str, think: bool) -> None:
    """Stream one reply: a "thinking:" section (dimmed), then an "answer:" section, then the stats.
    Left early (Ctrl+C), the stream is closed at once, which cancels the reply."""
    with contextlib.closing(bot.stream_chat(message, enable_thinking=think)) as stream:
        _print_events(stream)


def _print_events(stream: Iterator[ChatEvent]) -> None:
    section = None
    for event in stream:
        if isinstance(event, Loading):
            print(f"\r(loading: {event.stage}, {event.fraction:.0%})", end="", flush=True)
        elif isinstance(event, ThinkingDelta):
            if section != "thinking":
                print(f"\n{BOLD}thinking:{RESET}")
                section = "thinking"
            print(f"{DIM}{event.text}{RESET}", end="", flush=True)
        elif isinstance(event, AnswerDelta):
            if section != "answer":
                print(f"\n{'' if section is None else chr(10)}{BOLD}answer:{RESET}")
                section = "answer"
            print(event.text, end="", flush=True)
        elif isinstance(event, ChatDone):
            stats = event.stats
            print(
                f"\n{DIM}[{event.finish_reason}; {stats['new_tokens']} tokens, "
                f"{stats['tokens_per_second']:.1f} tok/s]{RESET}"
            )
