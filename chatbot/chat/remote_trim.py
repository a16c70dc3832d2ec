"""Making a web chat conversation fit a remote server's context, with no tokenizer here: in at most one retry.

The web chat leaves out the oldest whole turns of a conversation that does not fit the context (the
API never does). With a model loaded here the tokenizer says how many; behind ``--backend`` only the
server knows. Asking it once per dropped turn cost a 12,000-message chat minutes and the server's CPU,
so instead:

1. before sending, the turns that certainly cannot fit the server's reported context (``max_model_len``
   from ``/v1/models``) are left out by character count (``prompt.could_fit``, as locally);
2. if the server still refuses, its refusal usually says its context and how many tokens the messages
   took (vLLM's and OpenAI's words: "maximum context length is N tokens ... (M in the messages, ...)");
   from those, or a cautious character estimate, the turns to leave out are worked out once, and the
   request is sent once more. A second refusal is the user's error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .prompt import could_fit

# Template tokens around each message (role markers, newlines), counted as characters of text.
PER_MESSAGE_CHARS = 16
# Without the server's count: a cautious guess (English runs about 4 characters a token, code and CJK fewer).
CHARS_PER_TOKEN_GUESS = 2.0
# Room kept for what the estimate gets wrong.
ESTIMATE_MARGIN = 0.9
CONTEXT = (r"maximum context length is (\d+)", r"context window of (\d+)", r"n_ctx\D{0,4}(\d+)")
PROMPT = (
    r"\((\d+) in the messages",
    r"resulted in (\d+) tokens",
    r"has (\d+) input tokens",
    r"n_prompt_tokens\D{0,4}(\d+)",
)

Messages = list[dict[str, Any]]


def message_chars(message: dict[str, Any]) -> int:
    content = message.get("content") or ""
    return len(content) + sum(len(str(call)) for call in message.get("tool_calls") or ()) + PER_MESSAGE_CHARS


def turn_starts(messages: Sequence[dict[str, Any]]) -> tuple[int, list[int]]:
    """(how many system messages lead, the indexes where the kept part may start: each user message)."""
    head = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    return head, [i for i in range(head, len(messages)) if messages[i]["role"] == "user"]


def keep_newest(messages: Messages, fits) -> tuple[Messages, int] | None:
    """The leading system messages and the longest tail of whole turns for which ``fits(chars)`` holds
    (``chars``: the characters kept, per-message overhead included), and how many messages were left
    out; None when even the newest turn does not fit."""
    head, starts = turn_starts(messages)
    sizes = [message_chars(m) for m in messages]
    head_chars = sum(sizes[:head])
    tail_chars = [0] * (len(messages) + 1)
    for i in range(len(messages) - 1, head - 1, -1):
        tail_chars[i] = tail_chars[i + 1] + sizes[i]
    for start in [head, *starts]:
        if fits(head_chars + tail_chars[start]):
            return messages[:head] + messages[start:], start - head
    return None


def leave_out_what_cannot_fit(messages: Messages, context: int) -> tuple[Messages, int]:
    """Before sending: the oldest whole turns that certainly cannot fit ``context`` tokens left out."""
    if could_fit(messages, context):
        return messages, 0
    head, starts = turn_starts(messages)
    for start in starts:
        kept = messages[:head] + messages[start:]
        if could_fit(kept, context):
            return kept, start - head
    return messages, 0  # the newest turn alone is too long: the server says so


def reported_sizes(refusal: str) -> tuple[int | None, int | None]:
    """(the context, the tokens the messages took) as a server's refusal states them, when it does."""

    def first(patterns: tuple[str, ...]) -> int | None:
        for pattern in patterns:
            found = re.search(pattern, refusal)
            if found:
                return int(found.group(1))
        return None

    return first(CONTEXT), first(PROMPT)


def trim_to_report(
    messages: Messages, refusal: str, known_context: int | None, reply_tokens: int
) -> tuple[Messages, int] | None:
    """After a refusal for length: the oldest whole turns left out so that the rest fits, by the server's
    own counts when its refusal gives them (else ``known_context`` and a cautious character estimate), and
    how many messages that was; None when nothing can be left out to fit."""
    context, prompt_tokens = reported_sizes(refusal)
    context = context or known_context
    chars = sum(map(message_chars, messages))
    tokens_per_char = prompt_tokens / chars if prompt_tokens and chars else 1 / CHARS_PER_TOKEN_GUESS
    # No size known at all: half of what was refused.
    budget = chars * tokens_per_char / 2 if context is None else (context - reply_tokens) * ESTIMATE_MARGIN
    if budget <= 0:
        return None
    shorter = keep_newest(messages, lambda kept: kept * tokens_per_char <= budget)
    if shorter is None or shorter[1] == 0:
        return None
    return shorter
