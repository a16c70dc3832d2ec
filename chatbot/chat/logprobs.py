"""Log-probabilities of the answer's tokens in OpenAI's shape (``choices[].logprobs.content``).

The engine records every generated token (``TokenLogprob``); only the answer's tokens are
reported: not the thinking, not ``</think>``, not the end-of-turn token. Each entry has the token's
text, its UTF-8 ``bytes``, its ``logprob`` and the ``top_logprobs`` alternatives asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..engine.constraints import Vocabulary
from ..engine.sampling import TokenLogprob


def answer_records(
    records: Sequence[TokenLogprob], vocab: Vocabulary, *, thinking: bool, eos_ids: Sequence[int]
) -> list[TokenLogprob]:
    """The records of the answer's tokens (after ``</think>`` and the blank line that follows it when
    the reply thinks first), as the answer text is reported: stripped, without the end-of-turn token."""
    start = 0
    if thinking:
        closes = [i for i, record in enumerate(records) if record.token == vocab.think_close_id]
        if not closes:
            return []  # cut off while thinking: no answer
        start = closes[0] + 1
        while start < len(records) and not vocab.token_bytes[records[start].token].strip():
            start += 1
    kept = list(records[start:])
    while kept and kept[-1].token in eos_ids:
        kept.pop()
    return kept


def entry(vocab: Vocabulary, token: int, logprob: float) -> dict[str, Any]:
    raw = vocab.token_bytes[token] if token < len(vocab.token_bytes) else b""
    # A token the grammar forbids has -inf, which JSON cannot carry: -9999.0 as vLLM reports it.
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": max(logprob, -9999.0), "bytes": list(raw)}


def openai_logprobs(records: Sequence[TokenLogprob], vocab: Vocabulary) -> dict[str, Any]:
    """``{"content": [...], "refusal": None}`` for the given records."""
    content = [
        {**entry(vocab, r.token, r.logprob), "top_logprobs": [entry(vocab, t, lp) for t, lp in r.top]} for r in records
    ]
    return {"content": content, "refusal": None}


class StreamedLogprobs:
    """The answer's entries as a reply streams: each piece of answer text takes those not yet sent.

    The same records as ``answer_records`` picks from the whole reply, found as the tokens arrive (in
    one pass, however long the reply): from the first token after ``</think>`` and its blank line,
    without a trailing end-of-turn token.
    """

    def __init__(self, vocab: Vocabulary | None, thinking: bool, eos_ids: Sequence[int]) -> None:
        self.vocab, self.eos_ids = vocab, set(eos_ids)
        self.records: list[TokenLogprob] = []
        self.phase = "close" if thinking else "answer"  # looking for </think>, then past the blank, then answer
        self.scanned = 0
        self.next = 0  # index of the first answer record not sent yet

    def add(self, records: Sequence[TokenLogprob]) -> None:
        self.records.extend(records)

    def take(self) -> tuple[dict[str, Any], ...]:
        """The answer's entries that arrived since the last call."""
        if self.vocab is None:
            return ()
        records = self.records
        while self.phase != "answer" and self.scanned < len(records):
            token = records[self.scanned].token
            if self.phase == "close" and token == self.vocab.think_close_id:
                self.phase = "blank"
            elif self.phase == "blank" and self.vocab.token_bytes[token].strip():
                self.phase, self.next = "answer", self.scanned
                break
            self.scanned += 1
        if self.phase != "answer":
            return ()
        end = len(records)
        while end > self.next and records[end - 1].token in self.eos_ids:
            end -= 1
        fresh, self.next = records[self.next : end], max(self.next, end)
        return tuple(openai_logprobs(fresh, self.vocab)["content"])
