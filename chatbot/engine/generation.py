"""What one generation is made of, beside the model step: its result and stats, the streaming
detokenizer, the stop-string matcher and the cache of conversation prefixes.

The decode loop itself is the engine's (``scheduler.Batch`` rounds over ``request.ActiveRequest``s,
run by ``ChatEngine``'s worker thread): every caller, the servers and the bench alike, goes through it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

from .sampling import TokenLogprob


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    new_tokens: int = 0
    queue_seconds: float = 0.0
    time_to_first_token: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    tokens_per_second: float = 0.0  # decode speed after the first token
    total_seconds: float = 0.0
    time_limited: bool = False  # ended by the server's time limit (finish reason "length")

    def to_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    stats: GenerationStats
    logprobs: tuple[TokenLogprob, ...] = ()  # one per generated token when options.logprobs
    stop_sequence: str | None = None  # the stop string that ended the reply (left out of ``text``)


class IncrementalDetokenizer:
    """Decodes tokens as they come, holding back incomplete UTF-8 sequences (e.g. half a Chinese character)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix) :]


class StopStringMatcher:
    """Finds stop strings in streamed text, holding back text that may be the start of one.

    Each stop string has a Knuth-Morris-Pratt automaton whose state (the longest start of the stop string
    that the text so far ends with) carries over from one piece to the next, so each character is looked
    at a bounded number of times per stop string: the work is linear in the text streamed, however long
    the reply or the stop strings (re-searching the held-back text on every token made it quadratic).
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.pending = ""
        self._fallback = [_prefix_function(stop) for stop in self.stops]
        self._state = [0] * len(self.stops)
        self.hit: str | None = None  # the stop string found (the one that starts first)
        self.steps = 0  # automaton steps taken (what the work is; tests check that it stays linear)

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        buffer = self.pending + text
        if not self.stops:
            self.pending = ""
            return buffer, False
        offset = len(self.pending)  # where ``text`` starts in ``buffer``
        first_hit: int | None = None
        hit: str | None = None
        steps = 0
        for k, stop in enumerate(self.stops):
            state, fallback, length = self._state[k], self._fallback[k], len(stop)
            for i, char in enumerate(text):
                while state and stop[state] != char:
                    state = fallback[state - 1]
                    steps += 1
                steps += 1
                if stop[state] == char:
                    state += 1
                    if state == length:  # the first occurrence of this stop string: where it starts
                        start = offset + i + 1 - length
                        if first_hit is None or start < first_hit:
                            first_hit, hit = start, stop
                        break
            self._state[k] = state
        self.steps += steps
        if first_hit is not None:
            self.pending, self.hit = "", hit
            self._state = [0] * len(self.stops)
            return buffer[:first_hit], True
        keep = max(self._state)  # the longest held-back start of a stop string
        self.pending = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        self._state = [0] * len(self.stops)
        return text


def _prefix_function(stop: str) -> list[int]:
    """KMP's table: for each prefix of ``stop``, the length of its longest proper prefix that is also its suffix."""
    table = [0] * len(stop)
    state = 0
    for i in range(1, len(stop)):
        while state and stop[i] != stop[state]:
            state = table[state - 1]
        if stop[i] == stop[state]:
            state += 1
        table[i] = state
    return table


class PrefixCache:
    """Key/value caches of recent conversations, reused when a new prompt starts with the same tokens.

    Earlier turns are re-sent answer-only, so a follow-up prompt matches the previous one up to the
    last assistant turn: only the new part is prefilled. Entries are taken out while in use (a cache
    is never shared by two requests) and evicted least-recently-used beyond ``max_tokens`` in total.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, tuple[tuple[int, ...], Any]] = OrderedDict()
        self._next_key = 0
        self._lock = threading.Lock()

    def take(self, prompt: list[int]) -> tuple[Any | None, int]:
        """(cache cropped to the longest shared prefix, its length) or (None, 0)."""
        with self._lock:
            best_key, best_len = None, 0
            for key, (ids, _) in self._entries.items():
                shared = _common_prefix(ids, prompt)
                if shared > best_len:
                    best_key, best_len = key, shared
            if best_key is None:
                return None, 0
            ids, cache = self._entries.pop(best_key)
        reuse = min(best_len, len(prompt) - 1)  # at least one token must be fed to get logits
        if reuse <= 0:
            return None, 0
        excess = cache.get_seq_length() - reuse
        if excess > 0:
            cache.crop(-excess)
        return cache, reuse

    def put(self, ids: list[int], cache: Any) -> None:
        if not self.max_tokens or len(ids) > self.max_tokens or cache.get_seq_length() != len(ids):
            return
        with self._lock:
            self._entries[self._next_key] = (tuple(ids), cache)
            self._next_key += 1
            while sum(len(i) for i, _ in self._entries.values()) > self.max_tokens:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _common_prefix(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
