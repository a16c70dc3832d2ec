"""``Conversation``: one chat's history. Answers are re-sent to the model; thinking is kept beside them
for display; tool calls and results are turns too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ChatbotError
from .events import ChatDone
from .thinking import split_thinking


@dataclass
class Turn:
    role: str  # "user", "assistant" or "tool" (a tool's result)
    content: str
    thinking: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    # Every way this turn was written (an edited question, a regenerated answer), oldest first, with
    # what followed each; ``version`` is the one shown, the only one re-sent (see serve/ui_versions.py).
    versions: list[dict[str, Any]] = field(default_factory=list)
    version: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # an assistant's calls, OpenAI's shape
    tool_call_id: str = ""  # a tool result: the call it answers

    def message(self) -> dict[str, Any]:
        """The turn as a chat message to re-send (answer only; tool calls and results as OpenAI writes them)."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.role == "tool" and self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


@dataclass
class Conversation:
    """One chat's history; thread-compatible, not thread-safe (one user drives it)."""

    system_prompt: str = ""
    turns: list[Turn] = field(default_factory=list)

    def messages_with(self, message: str) -> list[dict[str, str]]:
        """The messages to send for a new user ``message`` (answers only for earlier replies)."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages += [t.message() for t in self.turns]
        messages.append({"role": "user", "content": message})
        return messages

    def add_exchange(self, message: str, done: ChatDone) -> None:
        self.turns.append(Turn("user", message))
        self.turns.append(Turn("assistant", done.answer, done.thinking, done.stats))

    def clear(self) -> None:
        self.turns.clear()

    def to_list(self) -> list[dict[str, Any]]:
        return [t.message() | ({"thinking": t.thinking} if t.role == "assistant" else {}) for t in self.turns]

    @classmethod
    def from_list(cls, items: Sequence[dict[str, Any]], system_prompt: str = "") -> Conversation:
        """Rebuild from ``to_list()`` output (e.g. an imported JSON file). An assistant message with no
        ``thinking`` field is raw model output: its text is split at </think>. One with the field (every
        chat this app saves) keeps its text as it is: an answer that mentions </think> stays whole."""
        turns = []
        for i, item in enumerate(items):
            role, content = item.get("role"), item.get("content")
            calls = item.get("tool_calls") if role == "assistant" else None
            if content is None and calls:
                content = ""  # a reply that only calls tools
            if role not in ("user", "assistant", "tool") or not isinstance(content, str):
                raise ChatbotError(f"Item {i} needs a role of user, assistant or tool and a text content.")
            if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
                raise ChatbotError(f"Item {i} has tool_calls that are not a list of calls.")
            thinking = item.get("thinking") or ""
            if role == "assistant" and "thinking" not in item and "</think>" in content:
                split = split_thinking(content)
                content, thinking = split.answer, thinking or split.thinking
            turn = Turn(role, content, thinking if isinstance(thinking, str) else "", tool_calls=calls or [])
            turn.tool_call_id = str(item.get("tool_call_id") or "") if role == "tool" else ""
            turns.append(turn)
        return cls(system_prompt, turns)
