"""The decode loop: prefill (chunked, reusing cached conversation prefixes), then one token at a time.

``Generator.run`` streams text deltas through a callback and returns a ``GenerationResult`` with
the finish reason ("stop", "length" or "cancelled") and the stats. It checks the request's stop
signal before every model step, so a cancelled request releases the model within one step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import GenerationError
from ..model.cpu_decode import decode_step_of
from ..model.cpu_layers import use_fp32_decode
from .kv_cache import new_cache
from .sampling import Sampler, SamplingOptions, TokenLogprob

log = logging.getLogger(__name__)
PREFILL_CHUNK = 2048  # bounds attention memory and lets a cancel interrupt a long prompt


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


def all_finite(logits: torch.Tensor) -> bool:
    """Whether no logit is inf or NaN, in one pass over the 151,936 values (``isfinite().all()`` takes four).

    Any inf or NaN makes the FP32 sum inf or NaN; finite logits would need magnitudes near 1e33 to
    overflow it, far beyond any working model's.
    """
    return bool(torch.isfinite(logits.sum(dtype=torch.float32)))


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
        self.steps = 0  # automaton steps taken (what the work is; tests check that it stays linear)

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        buffer = self.pending + text
        if not self.stops:
            self.pending = ""
            return buffer, False
        offset = len(self.pending)  # where ``text`` starts in ``buffer``
        first_hit: int | None = None
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
                        first_hit = start if first_hit is None else min(first_hit, start)
                        break
            self._state[k] = state
        self.steps += steps
        if first_hit is not None:
            self.pending = ""
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


class Generator:
    """Runs one request at a time on a loaded model (the engine's worker thread owns it)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        eos_ids: tuple[int, ...],
        device: torch.device,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.device = device
        self.prefix_cache = prefix_cache

    def _new_cache(self) -> Any:
        return new_cache(self.model.config)

    def _forward(self, ids: list[int], cache: Any, cancel: threading.Event | None = None) -> torch.Tensor | None:
        logits = None
        for start in range(0, len(ids), PREFILL_CHUNK):
            if cancel is not None and start and cancel.is_set():
                return None
            logits = self.step(ids[start : start + PREFILL_CHUNK], cache)
        return logits

    def step(self, ids: list[int], cache: Any) -> torch.Tensor:
        """One forward over ``ids``; non-finite logits (FP16 overflow) are recomputed with FP32 matmuls."""
        before = cache.get_seq_length()
        fast = decode_step_of(self.model, 1) if len(ids) == 1 else None
        if fast is not None:
            logits = fast(ids, [cache])[0]
        else:
            chunk = torch.tensor([ids], device=self.device)
            logits = self.model(input_ids=chunk, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
        if all_finite(logits):
            return logits
        if not use_fp32_decode(self.model):
            raise GenerationError(
                "The model produced inf/NaN (an overflow in this precision).",
                fix="Restart with --precision bf16 or --precision fp32.",
            )
        log.warning("FP16 overflow in a decode matmul: CPU layers decode in FP32 from now on")
        cache.crop(before - cache.get_seq_length())
        return self.step(ids, cache)

    @torch.inference_mode()
    def run(
        self,
        prompt_ids: list[int],
        options: SamplingOptions,
        cancel: threading.Event,
        emit: Callable[[str], None],
        queue_seconds: float = 0.0,
    ) -> GenerationResult:
        """Generate a reply to ``prompt_ids``, calling ``emit`` with each new piece of text."""
        stats = GenerationStats(prompt_tokens=len(prompt_ids), queue_seconds=queue_seconds)
        started = time.perf_counter()
        # A seeded request always prefills in full: a reused prefix is computed in other chunks, whose
        # rounding differs, so the same seed could otherwise give two replies.
        reusable = self.prefix_cache is not None and options.seed is None
        cache, reused = self.prefix_cache.take(prompt_ids) if reusable else (None, 0)
        cache = cache if cache is not None else self._new_cache()
        stats.cached_prompt_tokens = reused
        sampler = Sampler(options, prompt_ids, self.eos_ids, self.device, self.tokenizer)
        detokenizer = IncrementalDetokenizer(self.tokenizer)
        stopper = StopStringMatcher(options.stop)
        eos = set(self.eos_ids)
        generated: list[int] = []
        pieces: list[str] = []
        finish = "length"
        stop_hit = False
        logits = None if cancel.is_set() else self._forward(prompt_ids[reused:], cache, cancel)
        prefill_done = time.perf_counter()
        stats.prefill_seconds = prefill_done - started
        if logits is None:
            finish = "cancelled"
        while logits is not None:
            token = sampler.next_token(logits, len(generated))
            if not generated:
                stats.time_to_first_token = time.perf_counter() - started
            generated.append(token)
            if token in eos:
                finish = "stop"
                break
            text, hit = stopper.push(detokenizer.push(token))
            if text:
                pieces.append(text)
                emit(text)
            if hit:
                finish, stop_hit = "stop", True
                break
            if len(generated) >= options.max_new_tokens:
                finish = "length"
                break
            if cancel.is_set():
                finish = "cancelled"
                break
            logits = self._forward([token], cache)
        if not stop_hit:
            tail = stopper.push(detokenizer.flush())[0] + stopper.flush()
            if tail:
                pieces.append(tail)
                emit(tail)
        ended = time.perf_counter()
        stats.new_tokens = len(generated)
        stats.decode_seconds = ended - prefill_done
        stats.total_seconds = ended - started
        if len(generated) > 1 and stats.time_to_first_token:
            stats.tokens_per_second = (len(generated) - 1) / max(ended - started - stats.time_to_first_token, 1e-9)
        if self.prefix_cache is not None:
            fed = [*prompt_ids, *generated[:-1]] if generated else list(prompt_ids)
            self.prefix_cache.put(fed[: cache.get_seq_length()], cache)
        return GenerationResult("".join(pieces), tuple(generated), finish, stats, tuple(sampler.logprobs))
