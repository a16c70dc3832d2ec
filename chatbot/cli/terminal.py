"""``python -m chatbot chat``: a terminal chat. Thinking is printed dimmed, the answer plainly.

Commands: /think and /no_think (in a message) switch thinking for that message, /clear forgets the
history, /quit (or Ctrl-D) leaves.
"""

from __future__ import annotations

import sys

from ..chat.bot import Qwen3ChatBot
from ..chat.reply import AnswerDelta, ChatDone, Loading, ThinkingDelta
from ..engine.engine import ChatEngine
from ..errors import ChatbotError
from ..settings import Settings

DIM, RESET = ("\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "")


def chat_loop(model: str, settings: Settings, think: bool = False) -> int:
    engine = ChatEngine.from_settings(settings, model)
    bot = Qwen3ChatBot(engine=engine, system_prompt=settings.system_prompt, load="background")
    print(f"Chatting with {model}. /clear forgets the history, /quit leaves.")
    announced = False
    while True:
        try:
            message = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if message in ("/quit", "/exit"):
            return 0
        if message == "/clear":
            bot.clear_history()
            print("(history cleared)")
            continue
        if not message:
            continue
        try:
            for event in bot.stream_chat(message, enable_thinking=think):
                if isinstance(event, Loading):
                    print(f"\r(loading: {event.stage}, {event.fraction:.0%})", end="", flush=True)
                elif isinstance(event, ThinkingDelta):
                    print(f"{DIM}{event.text}{RESET}", end="", flush=True)
                elif isinstance(event, AnswerDelta):
                    print(event.text, end="", flush=True)
                elif isinstance(event, ChatDone):
                    stats = event.stats
                    print(
                        f"\n{DIM}[{event.finish_reason}; {stats['new_tokens']} tokens, "
                        f"{stats['tokens_per_second']:.1f} tok/s]{RESET}"
                    )
            if not announced:
                print(f"{DIM}{bot.precision.summary()}{RESET}")
                announced = True
        except KeyboardInterrupt:
            print("\n(stopped)")
        except ChatbotError as exc:
            print(f"\nerror: {exc}")
