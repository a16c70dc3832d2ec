"""Chat on top of the engine: typed streaming events with thinking and answer apart, and history.

``stream_reply`` is the one function the bot, the web UI and the API all call: it waits for the
model (yielding ``Loading`` progress), builds the prompt, streams ``ThinkingDelta``/``AnswerDelta``
events and ends with ``ChatDone``, which carries the authoritative split, the finish reason and
the stats. ``Conversation`` keeps one chat's history: answers are re-sent to the model, thinking is
kept beside them for display.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engine.engine import ChatEngine, Failed, Finished, Queued, TextDelta
from ..engine.sampling import sampling_options
from ..errors import ChatbotError
from .prompt import build_prompt, effective_thinking, normalize_messages
from .thinking import ThinkingStreamSplitter, split_thinking

LOADING_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Loading:
    stage: str
    fraction: float


@dataclass(frozen=True)
class QueuePosition:
    position: int


@dataclass(frozen=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True)
class AnswerDelta:
    text: str


@dataclass(frozen=True)
class ChatDone:
    thinking: str
    answer: str
    full_response: str
    finish_reason: str  # "stop", "length" or "cancelled"
    enable_thinking: bool
    stats: dict[str, Any]
    dropped_messages: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "thinking": self.thinking,
            "answer": self.answer,
            "full_response": self.full_response,
            "finish_reason": self.finish_reason,
            "stats": self.stats,
        }


ChatEvent = Loading | QueuePosition | ThinkingDelta | AnswerDelta | ChatDone


def wait_for_model(engine: ChatEngine) -> Iterator[Loading]:
    """Yield progress until the engine's model is ready; raises the load error if loading fails."""
    if engine.loaded is not None:
        return
    engine.start_loading()
    while engine.loaded is None:
        if engine.load_error is not None:
            raise engine.load_error
        stage, fraction = engine.progress.snapshot()
        yield Loading(stage, fraction)
        time.sleep(LOADING_POLL_SECONDS)


def stream_reply(
    engine: ChatEngine,
    messages: Sequence[dict[str, Any]],
    *,
    enable_thinking: bool = False,
    cancel: threading.Event | None = None,
    **generation_kwargs: Any,
) -> Iterator[ChatEvent]:
    """Stream the assistant's reply to ``messages`` (the last one a user message).

    Args:
        engine: the shared engine.
        messages: [{"role", "content"}...]; assistant contents are re-sent answer-only.
        enable_thinking: thinking mode (``/think`` or ``/no_think`` in the last message overrides it).
        cancel: set it to stop the generation; the stream then ends with finish_reason "cancelled".
        **generation_kwargs: sampling options (see ``SamplingOptions``), e.g. temperature, max_new_tokens.
    Raises:
        InvalidRequestError, ContextLengthError: bad messages or options; nothing was generated.
        QueueFullError: too many requests waiting.
        GenerationError: generation failed part-way.
    """
    clean = normalize_messages(messages)
    thinking = effective_thinking(clean, enable_thinking)
    options = sampling_options(thinking, **generation_kwargs)
    yield from wait_for_model(engine)
    loaded = engine.load()
    prompt = build_prompt(
        loaded.tokenizer,
        clean,
        enable_thinking=thinking,
        max_context=loaded.max_context,
        max_new_tokens=options.max_new_tokens,
    )
    splitter = ThinkingStreamSplitter(expect_thinking=thinking)
    for event in engine.stream(prompt.ids, options, cancel):
        if isinstance(event, Queued):
            yield QueuePosition(event.position)
        elif isinstance(event, TextDelta):
            for kind, text in splitter.feed(event.text):
                yield ThinkingDelta(text) if kind == "thinking" else AnswerDelta(text)
        elif isinstance(event, Finished):
            result = event.result
            # Thinking off: all answer. Cut short while thinking: the thinking stays thinking.
            split = splitter.finish(cut=result.finish_reason != "stop")
            yield ChatDone(
                split.thinking,
                split.answer,
                result.text,
                result.finish_reason,
                thinking,
                result.stats.to_dict(),
                prompt.dropped_messages,
            )
        elif isinstance(event, Failed):
            raise event.error


def batch_reply(
    engine: ChatEngine,
    conversations: Sequence[Sequence[dict[str, Any]]],
    *,
    enable_thinking: bool = False,
    cancel: threading.Event | None = None,
    **generation_kwargs: Any,
) -> list[dict[str, Any]]:
    """Replies to several independent conversations, generated together in one batch.

    Returns one dict per conversation: thinking, answer, full_response, finish_reason,
    prompt_tokens, completion_tokens. Raises like ``stream_reply`` when any conversation is invalid.
    """
    options = sampling_options(enable_thinking, **generation_kwargs)
    loaded = engine.load()
    prompts = [
        build_prompt(
            loaded.tokenizer,
            messages,
            enable_thinking=enable_thinking,
            max_context=loaded.max_context,
            max_new_tokens=options.max_new_tokens,
        )
        for messages in conversations
    ]
    results = engine.run_batch([p.ids for p in prompts], options, cancel)
    replies = []
    for prompt, result in zip(prompts, results, strict=True):
        split = split_thinking(result.text, expect_thinking=prompt.enable_thinking, cut=result.finish_reason != "stop")
        replies.append(
            {
                "thinking": split.thinking,
                "answer": split.answer,
                "full_response": result.text,
                "finish_reason": result.finish_reason,
                "prompt_tokens": len(prompt.ids),
                "completion_tokens": len(result.token_ids),
            }
        )
    return replies


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    content: str
    thinking: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    # Every answer given to the same question when there are several (regenerated), oldest first, as
    # {"content", "thinking", "stats"}; ``version`` is the one shown. Only the shown one is re-sent.
    versions: list[dict[str, Any]] = field(default_factory=list)
    version: int = 0


@dataclass
class Conversation:
    """One chat's history; thread-compatible, not thread-safe (one user drives it)."""

    system_prompt: str = ""
    turns: list[Turn] = field(default_factory=list)

    def messages_with(self, message: str) -> list[dict[str, str]]:
        """The messages to send for a new user ``message`` (answers only for earlier replies)."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages += [{"role": t.role, "content": t.content} for t in self.turns]
        messages.append({"role": "user", "content": message})
        return messages

    def add_exchange(self, message: str, done: ChatDone) -> None:
        self.turns.append(Turn("user", message))
        self.turns.append(Turn("assistant", done.answer, done.thinking, done.stats))

    def clear(self) -> None:
        self.turns.clear()

    def to_list(self) -> list[dict[str, Any]]:
        return [
            {"role": t.role, "content": t.content, **({"thinking": t.thinking} if t.role == "assistant" else {})}
            for t in self.turns
        ]

    @classmethod
    def from_list(cls, items: Sequence[dict[str, Any]], system_prompt: str = "") -> Conversation:
        """Rebuild from ``to_list()`` output (e.g. an imported JSON file); assistant text is split at </think>."""
        turns = []
        for i, item in enumerate(items):
            role, content = item.get("role"), item.get("content")
            if role not in ("user", "assistant") or not isinstance(content, str):
                raise ChatbotError(f"Item {i} needs a role of user or assistant and a text content.")
            thinking = item.get("thinking") or ""
            if role == "assistant" and "</think>" in content:
                split = split_thinking(content)
                content, thinking = split.answer, thinking or split.thinking
            turns.append(Turn(role, content, thinking if isinstance(thinking, str) else ""))
        return cls(system_prompt, turns)
