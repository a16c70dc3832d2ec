"""Turning a conversation into prompt tokens: chat template, thinking switch, context trimming.

* Control tokens typed by a user (``<|im_end|>``, ``<|im_start|>system``, ``<think>``...) are encoded
  as plain text (``apply_chat_template(..., sanitize_control_tokens=True)``), so no message can
  forge a turn or fake thinking.
* Earlier assistant turns are re-sent answer-only, as Qwen recommends.
* The prompt plus ``max_new_tokens`` must fit the context window: the oldest whole turns are
  dropped, never the system prompt or the newest message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ContextLengthError, InvalidRequestError
from .thinking import split_thinking

ROLES = ("system", "user", "assistant")
SOFT_SWITCH_RE = re.compile(r"(?<![\w/])/(no_think|think)\b")


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    enable_thinking: bool
    dropped_messages: int  # oldest messages left out to fit the window


def soft_switch(text: str) -> bool | None:
    """Qwen3's ``/think`` and ``/no_think`` in a user message: the last one wins; None if absent."""
    matches = SOFT_SWITCH_RE.findall(text)
    if not matches:
        return None
    return matches[-1] == "think"


def normalize_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Validate roles and contents; assistant turns keep their answer only.

    Raises:
        InvalidRequestError: empty list, unknown role, non-string content, system message not first,
        or a conversation that does not end with a user message.
    """
    if not messages:
        raise InvalidRequestError("messages must not be empty", param="messages")
    clean: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content")
        if role not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role is {role!r}; use one of {', '.join(ROLES)}", param=f"messages[{i}].role"
            )
        if not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        if not _is_encodable(content):
            raise InvalidRequestError(
                f"messages[{i}].content is not valid Unicode text (it holds an unpaired surrogate)",
                param=f"messages[{i}].content",
                fix="Send UTF-8 text; unpaired \\ud800-\\udfff escapes cannot be encoded.",
            )
        if role == "system" and i != 0:
            raise InvalidRequestError("only the first message may be a system message", param=f"messages[{i}].role")
        if role == "assistant":
            content = split_thinking(content).answer
        clean.append({"role": role, "content": content})
    if clean[-1]["role"] != "user":
        raise InvalidRequestError("the last message must be a user message", param="messages")
    if not clean[-1]["content"].strip():
        raise InvalidRequestError("the last user message is empty", param="messages", fix="Type a message.")
    return clean


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def effective_thinking(messages: Sequence[dict[str, str]], enable_thinking: bool) -> bool:
    """The thinking switch after the newest user message's soft switch (``/think``, ``/no_think``)."""
    switched = soft_switch(messages[-1]["content"])
    return enable_thinking if switched is None else switched


def encode(tokenizer: Any, messages: list[dict[str, str]], enable_thinking: bool) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
            sanitize_control_tokens=True,
            enable_thinking=enable_thinking,
        )
    )


def build_prompt(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    enable_thinking: bool,
    max_context: int,
    max_new_tokens: int,
) -> Prompt:
    """Token ids for the conversation, trimmed so that the reply has ``max_new_tokens`` of room.

    Raises:
        InvalidRequestError: malformed messages (see ``normalize_messages``).
        ContextLengthError: the newest message (with the system prompt) alone does not fit.
    """
    clean = normalize_messages(messages)
    thinking = effective_thinking(clean, enable_thinking)
    budget = max_context - max_new_tokens
    has_system = clean[0]["role"] == "system"
    head = clean[:1] if has_system else []
    body = clean[len(head) :]
    # Where the kept part may start: the oldest whole turns (a user message and its replies) go
    # first, and the newest message always stays. Fewer kept turns never make a longer prompt, so
    # a binary search finds the longest tail that fits with a handful of encodings.
    starts = sorted({0, *(i for i in range(1, len(body)) if body[i]["role"] == "user" or i == len(body) - 1)})
    encoded: dict[int, list[int]] = {}

    def kept_from(k: int) -> list[int]:
        if k not in encoded:
            encoded[k] = encode(tokenizer, head + body[starts[k] :], thinking)
        return encoded[k]

    if len(kept_from(0)) <= budget:  # the usual case: everything fits
        return Prompt(encoded[0], thinking, 0)
    low, high = 1, len(starts) - 1
    if len(kept_from(high)) > budget:
        raise ContextLengthError(
            f"The message needs {len(encoded[high])} tokens of prompt"
            f"{' (with the system prompt)' if has_system else ''}; with max_new_tokens={max_new_tokens} that "
            f"exceeds the context window of {max_context} tokens.",
            param="messages",
            fix="Shorten the message, shorten the system prompt, or lower max_new_tokens.",
        )
    while low < high:
        middle = (low + high) // 2
        if len(kept_from(middle)) > budget:
            low = middle + 1
        else:
            high = middle
    return Prompt(kept_from(low), thinking, starts[low])
