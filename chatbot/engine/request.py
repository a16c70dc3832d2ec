"""One request inside the continuous batch: its cache, its sampler, its text so far and why it ended.

The scheduler feeds it prompt chunks (``next_chunk``), has it pick a token from the logits of each
step on the device (``pick``, with its own ``Sampler``: own options, seed and penalties) and hands
back the values it read (``accept``); the request then streams text through the streaming
detokenizer and the stop-string matcher, and decides its own end: end of turn, a stop string,
``max_new_tokens``, the server's time limit or its cancel signal.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..errors import GenerationError
from .generation import GenerationResult, GenerationStats, IncrementalDetokenizer, PrefixCache, StopStringMatcher
from .jobs import Job, TextDelta
from .kv_cache import new_cache
from .sampling import Sampler


class ActiveRequest:
    """A job admitted to the batch (see the module docstring)."""

    def __init__(
        self,
        job: Job,
        config: Any,
        tokenizer: Any,
        eos_ids: tuple[int, ...],
        device: torch.device,
        prefix: PrefixCache,
        time_limit: float | None = None,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        if not job.prompt_ids:
            raise GenerationError("The prompt is empty: nothing to continue.", fix="Send at least one message.")
        self.job = job
        self.config = config
        self.started = time.perf_counter()
        # From the start of its generation (not its wait in the queue); paused turns count, as for the user.
        self.deadline = self.started + time_limit if time_limit else None
        self.timed_out = False
        self.stats = GenerationStats(prompt_tokens=len(job.prompt_ids), queue_seconds=self.started - job.submitted)
        self.prefix = prefix
        # A seeded request always prefills in full: a reused prefix was computed in other chunks, whose
        # rounding differs, so the same seed could otherwise give two replies.
        # A choice whose prompt another choice has read copies that one's cache instead (shared_prefill).
        reusable = prefix.max_tokens and job.options.seed is None and not (job.shared and job.shared.available)
        cache, reused = prefix.take(job.prompt_ids) if reusable else (None, 0)
        self.cache = cache if cache is not None else new_cache(config, kv_dtype)
        self.stats.cached_prompt_tokens = reused
        self.unfed = list(job.prompt_ids[reused:])  # prompt tokens still to prefill
        self.sampler = Sampler(job.options, job.prompt_ids, eos_ids, device, tokenizer)
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stopper = StopStringMatcher(job.options.stop)
        self.eos = set(eos_ids)
        self.generated: list[int] = []
        self.pieces: list[str] = []
        self.reported = 0  # token log-probabilities already sent with a piece of text
        self.finish: str | None = None
        self.stop_hit = False
        self.prefill_done = 0.0

    @property
    def prefilling(self) -> bool:
        return bool(self.unfed)

    @property
    def last_token(self) -> int:
        return self.generated[-1]

    def next_chunk(self, size: int) -> list[int]:
        chunk, self.unfed = self.unfed[:size], self.unfed[size:]
        return chunk

    def adopt(self, cache: Any) -> None:
        """Take ``cache``, which holds this request's whole prompt (copied from another choice of the same
        request): nothing is left to prefill; the first token comes from that choice's last logits."""
        self.cache = cache
        self.unfed = []
        self.stats.cached_prompt_tokens = len(self.job.prompt_ids)

    def check_cancel(self) -> bool:
        """Ends the request as cancelled if its stop signal is set; True when it did."""
        if self.finish is None and self.job.cancel.is_set():
            self.finish = "cancelled"
        return self.finish == "cancelled"

    def check_time(self) -> bool:
        """Ends the request with finish reason "length" once it is past its time limit; True when it did."""
        if self.finish is None and self.deadline is not None and time.perf_counter() > self.deadline:
            self.finish, self.timed_out = "length", True
        return self.timed_out

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token from ``logits`` [vocab], on the device (``Sampler.pick``); nothing is read."""
        if not self.generated:
            self.prefill_done = time.perf_counter()
            self.stats.prefill_seconds = self.prefill_done - self.started
        return self.sampler.pick(logits, len(self.generated))

    def accept(self, values: list[float]) -> None:
        """Take the token ``pick`` chose (its values, read by the scheduler) and stream its text; sets
        ``finish`` at the end."""
        token = self.sampler.commit(values)
        if not self.generated:
            self.stats.time_to_first_token = time.perf_counter() - self.started
        self.generated.append(token)
        if self.job.token_times is not None:
            self.job.token_times.append(time.perf_counter())
        if token in self.eos:
            self.finish = "stop"
            return
        text, hit = self.stopper.push(self.detokenizer.push(token))
        self._emit(text)
        if hit:
            self.finish, self.stop_hit = "stop", True
        elif len(self.generated) >= self.job.options.max_new_tokens:
            self.finish = "length"
        else:
            self.check_cancel()

    def _emit(self, text: str) -> None:
        if text:
            self.pieces.append(text)
            records = self.sampler.logprobs
            self.job.events.put(TextDelta(text, tuple(records[self.reported :])))
            self.reported = len(records)

    def result(self) -> GenerationResult:
        """The reply so far with its finish reason (cancelled if it has none); stores the cache for reuse."""
        if not self.stop_hit:
            self._emit(self.stopper.push(self.detokenizer.flush())[0] + self.stopper.flush())
        ended = time.perf_counter()
        stats = self.stats
        stats.new_tokens = len(self.generated)
        stats.decode_seconds = ended - self.prefill_done if self.prefill_done else 0.0
        stats.total_seconds = ended - self.started
        stats.time_limited = self.timed_out
        if len(self.generated) > 1 and stats.time_to_first_token:
            stats.tokens_per_second = (len(self.generated) - 1) / max(
                stats.total_seconds - stats.time_to_first_token, 1e-9
            )
        if self.job.shared is not None:  # the cache goes on to the prefix cache: no more copies of it
            self.job.shared.drop(self)
        if self.prefix.max_tokens:
            fed = [*self.job.prompt_ids, *self.generated[:-1]] if self.generated else list(self.job.prompt_ids)
            self.prefix.put(fed[: self.cache.get_seq_length()], self.cache)
        finish = self.finish or "cancelled"
        return GenerationResult(
            "".join(self.pieces),
            tuple(self.generated),
            finish,
            stats,
            tuple(self.sampler.logprobs),
            self.stopper.hit if self.stop_hit else None,
        )
