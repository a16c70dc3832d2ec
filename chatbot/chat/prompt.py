"""Turning a conversation into prompt tokens: chat template, thinking switch, context trimming.

* Control tokens typed by a user (``<|im_end|>``, ``<|im_start|>system``, ``<think>``...) are encoded
  as plain text (``apply_chat_template(..., sanitize_control_tokens=True)``), so no message can
  forge a turn or fake thinking.
* Earlier assistant turns are re-sent answer-only, as Qwen recommends.
* The prompt plus ``max_new_tokens`` must fit the context window: for the chat UI and the Python
  API the oldest whole turns are dropped, never the system prompt or the newest message; the API
  refuses instead (``trim=False``), with OpenAI's ``context_length_exceeded`` wording.
* ``tools`` are rendered by the model's own chat template; the last message may be the assistant's,
  which the reply then continues (``continue_final_message``). That message keeps its thinking
  (``reasoning_content``, or ``<think>`` in its content): with no answer yet, the prompt ends inside
  the thinking (a reply cut there goes on thinking); otherwise inside the answer.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ContextLengthError, InvalidRequestError
from .thinking import split_thinking

ROLES = ("system", "developer", "user", "assistant", "tool")
SOFT_SWITCH_RE = re.compile(r"(?<![\w/])/(no_think|think)\b")
# Prompts tokenized at once, process-wide. Callers are threads (each API request has one, the web chat's
# handlers run in Gradio's pool, never on an event loop); a burst of long conversations waits here instead
# of taking every core and holding every token list at the same time.
TOKENIZING_AT_ONCE = max(1, min(4, os.cpu_count() or 1))
_tokenizing = threading.BoundedSemaphore(TOKENIZING_AT_ONCE)


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    enable_thinking: bool
    dropped_messages: int  # oldest messages left out to fit the window
    continues: bool = False  # the last message is the assistant's, and the reply continues it
    continues_thinking: bool = False  # ... and it was cut in its thinking: the prompt ends inside it

    @property
    def continued_part(self) -> str:
        """Where the reply starts: "thinking" or "answer" (a continued message), "" (a new reply)."""
        return ("thinking" if self.continues_thinking else "answer") if self.continues else ""


def soft_switch(text: str) -> bool | None:
    """Qwen3's ``/think`` and ``/no_think`` in a user message: the last one wins; None if absent."""
    matches = SOFT_SWITCH_RE.findall(text)
    if not matches:
        return None
    return matches[-1] == "think"


def _tool_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    """Assistant ``tool_calls`` as the template renders them; arguments stay the JSON text sent."""
    param = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise InvalidRequestError(f"{param} must be a list", param=param)
    clean = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        arguments = function.get("arguments", "{}") if isinstance(function, dict) else None
        if not isinstance(name, str) or not isinstance(arguments, str | dict):
            raise InvalidRequestError(
                f'{param}[{j}] must look like {{"id", "type": "function", "function": {{"name", "arguments"}}}}',
                param=f"{param}[{j}]",
            )
        clean.append({"type": "function", "id": call.get("id"), "function": {"name": name, "arguments": arguments}})
    return clean


def normalize_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate roles and contents; assistant turns keep their answer only.

    ``developer`` is a system message (OpenAI's newer name); system messages may come anywhere.
    Assistant messages may have ``content: null`` with ``tool_calls``; ``tool`` messages carry tool
    results. A conversation ending with an assistant message asks to continue that message.

    Raises:
        InvalidRequestError: empty list, unknown role, non-string content, malformed tool calls, or
        an empty last user message.
    """
    if not messages:
        raise InvalidRequestError("messages must not be empty", param="messages")
    clean: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content")
        if role not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role is {role!r}; use one of {', '.join(ROLES)}", param=f"messages[{i}].role"
            )
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        if not _is_encodable(content):
            raise InvalidRequestError(
                f"messages[{i}].content is not valid Unicode text (it holds an unpaired surrogate)",
                param=f"messages[{i}].content",
                fix="Send UTF-8 text; unpaired \\ud800-\\udfff escapes cannot be encoded.",
            )
        item: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": content}
        if role == "assistant":
            split = split_thinking(content)
            item["content"] = split.answer
            if i == len(messages) - 1:  # the message the reply continues: its thinking is part of the prompt
                reasoning = continued_reasoning(message, split.thinking, i)
                if reasoning is not None:
                    item["reasoning_content"] = reasoning
            if message.get("tool_calls"):
                item["tool_calls"] = _tool_calls(message["tool_calls"], i)
        if role == "tool" and message.get("tool_call_id") is not None:
            item["tool_call_id"] = message["tool_call_id"]
        clean.append(item)
    if clean[-1]["role"] == "user" and not clean[-1]["content"].strip():
        raise InvalidRequestError("the last user message is empty", param="messages", fix="Type a message.")
    return clean


def continued_reasoning(message: dict[str, Any], split_off: str, index: int) -> str | None:
    """The thinking of an assistant message to continue: its ``reasoning_content`` (or ``reasoning``, vLLM's
    newer name), else the ``<think>`` part of its content; None when it has none.

    Raises:
        InvalidRequestError: a reasoning field that is not text.
    """
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if value is not None:
            if not isinstance(value, str) or not _is_encodable(value):
                raise InvalidRequestError(f"messages[{index}].{key} must be text", param=f"messages[{index}].{key}")
            return value
    return split_off or None


def thinking_is_open(message: dict[str, Any]) -> bool:
    """A normalized assistant message cut in its thinking: thinking given, no answer and no tool calls yet."""
    return "reasoning_content" in message and not message["content"] and not message.get("tool_calls")


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def effective_thinking(messages: Sequence[dict[str, Any]], enable_thinking: bool) -> bool:
    """The thinking switch after the newest user message's soft switch (``/think``, ``/no_think``)."""
    users = [m for m in messages if m["role"] == "user"]
    switched = soft_switch(users[-1]["content"]) if users else None
    return enable_thinking if switched is None else switched


def encode(
    tokenizer: Any, messages: list[dict[str, Any]], enable_thinking: bool, tools: list[dict[str, Any]] | None = None
) -> list[int]:
    continues = messages[-1]["role"] == "assistant"
    # A message cut in its thinking is continued there (transformers cuts the render after that field).
    continued: bool | str = "reasoning_content" if continues and thinking_is_open(messages[-1]) else continues
    with _tokenizing:
        try:
            ids = tokenizer.apply_chat_template(
                messages,
                tools=tools or None,
                add_generation_prompt=not continues,
                continue_final_message=continued,
                tokenize=True,
                return_dict=False,
                sanitize_control_tokens=True,
                enable_thinking=enable_thinking,
            )
        except ValueError as exc:
            if not continues:
                raise
            # A template that drops the message's text (or has no reasoning_content): said plainly, a 400.
            raise InvalidRequestError(
                f"This model's chat template cannot continue the last assistant message ({exc}).".split("\n")[0],
                param="messages",
                fix="Send the conversation without the unfinished assistant message to get a new reply.",
            ) from exc
    return list(ids)


def context_error(max_context: int, prompt_tokens: int, max_new_tokens: int | None) -> ContextLengthError:
    """OpenAI's words for a conversation that does not fit (clients such as litellm match them)."""
    if max_new_tokens is None:
        text = (
            f"This model's maximum context length is {max_context} tokens. However, your messages resulted in "
            f"{prompt_tokens} tokens. Please reduce the length of the messages."
        )
    else:
        text = (
            f"This model's maximum context length is {max_context} tokens. However, you requested "
            f"{prompt_tokens + max_new_tokens} tokens ({prompt_tokens} in the messages, {max_new_tokens} in the "
            "completion). Please reduce the length of the messages or completion."
        )
    return ContextLengthError(text, param="messages")


def build_prompt(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    enable_thinking: bool,
    max_context: int,
    max_new_tokens: int | None,
    tools: list[dict[str, Any]] | None = None,
    trim: bool = True,
) -> Prompt:
    """Token ids for the conversation, trimmed so that the reply has ``max_new_tokens`` of room.

    With ``trim=False`` (the API) nothing is dropped: a conversation that does not fit is a
    ``ContextLengthError`` in OpenAI's words. ``max_new_tokens=None`` asks for at least one token of room.

    Raises:
        InvalidRequestError: malformed messages (see ``normalize_messages``).
        ContextLengthError: the conversation (or, when trimming, the newest message with the system
        prompt) does not fit.
    """
    clean = normalize_messages(messages)
    thinking = effective_thinking(clean, enable_thinking)
    continues = clean[-1]["role"] == "assistant"
    in_thinking = continues and thinking_is_open(clean[-1])
    room = 1 if max_new_tokens is None else max_new_tokens
    budget = max_context - room
    if not trim:
        if not could_fit(clean, max_context):  # refused before tokenizing megabytes of text
            raise ContextLengthError(
                f"This model's maximum context length is {max_context} tokens. However, your messages hold "
                f"{sum(map(_chars, clean))} characters in {len(clean)} messages, far more than fit in it. "
                "Please reduce the length of the messages.",
                param="messages",
            )
        ids = encode(tokenizer, clean, thinking, tools)
        if len(ids) > budget:
            raise context_error(max_context, len(ids), max_new_tokens)
        return Prompt(ids, thinking, 0, continues, in_thinking)
    has_system = clean[0]["role"] == "system"
    head = clean[:1] if has_system else []
    body = clean[len(head) :]
    # What always stays: the newest message, and for a continued reply the question it answers too.
    newest = len(body) - 1
    if continues:
        newest = max((i for i, m in enumerate(body) if m["role"] == "user"), default=newest)
    if not could_fit([*head, *body[newest:]], max_context):
        raise ContextLengthError(
            f"The message is {sum(map(_chars, body[newest:]))} characters long, far more than the context window of "
            f"{max_context} tokens holds.",
            param="messages",
            fix="Shorten the message (or the system prompt).",
        )
    # Before any tokenizing, leave out the oldest turns that could not fit anyway.
    dropped = 0
    while not could_fit(head + body, max_context):
        later = next((i for i in range(1, len(body)) if body[i]["role"] == "user"), len(body) - 1)
        if later > newest - dropped:
            break
        dropped += later
        body = body[later:]
    newest -= dropped
    # Where the kept part may start: the oldest whole turns (a user message and its replies) go
    # first, and the newest message always stays. Fewer kept turns never make a longer prompt, so
    # a binary search finds the longest tail that fits with a handful of encodings.
    starts = sorted({0, *(i for i in range(1, newest + 1) if body[i]["role"] == "user" or i == newest)})
    encoded: dict[int, list[int]] = {}

    def kept_from(k: int) -> list[int]:
        if k not in encoded:
            encoded[k] = encode(tokenizer, head + body[starts[k] :], thinking, tools)
        return encoded[k]

    if len(kept_from(0)) <= budget:  # the usual case: everything fits
        return Prompt(encoded[0], thinking, dropped, continues, in_thinking)
    low, high = 1, len(starts) - 1
    if len(kept_from(high)) > budget and continues:
        raise ContextLengthError(
            f"The reply to continue, with its question, takes {len(encoded[high])} tokens of the context window's "
            f"{max_context}: no room is left for {room} more.",
            param="messages",
            fix="Lower max new tokens, or start a new chat (ask for the rest there).",
        )
    if len(kept_from(high)) > budget:
        raise ContextLengthError(
            f"The message needs {len(encoded[high])} tokens of prompt"
            f"{' (with the system prompt)' if has_system else ''}; with max_new_tokens={room} that "
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
    return Prompt(kept_from(low), thinking, dropped + starts[low], continues, in_thinking)


# Cheap bounds, checked before tokenizing (megabytes of text cost seconds and gigabytes to tokenize): a
# token of real text averages far fewer characters than this (Qwen3's longest token is 128 characters of
# spaces or dashes), and every message costs at least this many tokens of chat template.
MOST_CHARS_PER_TOKEN = 16
LEAST_TOKENS_PER_MESSAGE = 4


def _chars(message: dict[str, Any]) -> int:
    return len(message["content"]) + sum(len(str(call)) for call in message.get("tool_calls", ()))


def could_fit(messages: Sequence[dict[str, Any]], max_context: int) -> bool:
    """False when ``messages`` certainly cannot fit in ``max_context`` tokens (no tokenizing needed)."""
    chars = sum(map(_chars, messages))
    return chars <= max_context * MOST_CHARS_PER_TOKEN and len(messages) * LEAST_TOKENS_PER_MESSAGE <= max_context
