"""What a reply streams, whatever answers it: typed events, the last one (``ChatDone``) carrying the
authoritative thinking/answer split, the finish reason and the stats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .tools import ToolCall


@dataclass(frozen=True)
class Loading:
    stage: str
    fraction: float


@dataclass(frozen=True)
class QueuePosition:
    position: int
    paused: bool = False  # the reply stopped part-way to give someone else a turn; it continues by itself


@dataclass(frozen=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True)
class AnswerDelta:
    text: str
    # With logprobs asked for: OpenAI's entries for the answer tokens that arrived with this piece.
    logprobs: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ToolCallDelta:
    """A whole tool call parsed from the streaming answer; ``index`` counts the reply's calls from 0."""

    index: int
    call: ToolCall


@dataclass(frozen=True)
class ChatDone:
    thinking: str
    answer: str  # without tool-call blocks when tools were offered
    full_response: str
    finish_reason: str  # "stop", "length", "tool_calls" or "cancelled"
    enable_thinking: bool
    stats: dict[str, Any]
    dropped_messages: int = 0
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: dict[str, Any] | None = None  # OpenAI's {"content": [...]} when asked for
    stop_sequence: str | None = None  # the request's stop string that ended the reply, when one did

    def as_dict(self) -> dict[str, Any]:
        return {
            "thinking": self.thinking,
            "answer": self.answer,
            "full_response": self.full_response,
            "finish_reason": self.finish_reason,
            "stats": self.stats,
        }


ChatEvent = Loading | QueuePosition | ThinkingDelta | AnswerDelta | ToolCallDelta | ChatDone
