"""Sampling options (validated, with ranges) and the next-token sampler.

``Sampler`` is one request's logits work: it takes one row of logits, applies ``logit_bias`` and
the grammar of a ``Constraint`` (engine/constraints.py), records the chosen token's log-probability
and the most likely alternatives when asked, then applies penalties and samples.

Defaults follow Qwen3's recommendations for each mode: thinking 0.6 / 0.95 / 20, non-thinking
0.7 / 0.8 / 20 (temperature / top_p / top_k). Greedy decoding is not used in thinking mode (Qwen
warns it leads to endless repetition): a temperature of 0 there becomes the mode's default.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidRequestError
from .constraints import Constraint, GrammarState, vocabulary

log = logging.getLogger(__name__)

THINKING_DEFAULTS: dict[str, Any] = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
NON_THINKING_DEFAULTS: dict[str, Any] = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}
DEFAULT_MAX_NEW_TOKENS = 2048
MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20


class SamplingOptions(BaseModel):
    """How to pick each next token, and when to stop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 = greedy (non-thinking mode only).")
    top_p: float = Field(
        0.8, ge=0.0, le=1.0, description="Nucleus sampling: keep the smallest set with this mass (0: the top token)."
    )
    top_k: int = Field(20, ge=0, le=1000, description="Keep the k most likely tokens (0 = all).")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="Drop tokens below min_p x the top probability.")
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=131072, description="Most tokens to generate.")
    min_new_tokens: int = Field(0, ge=0, le=131072, description="End-of-turn is suppressed before this many.")
    repetition_penalty: float = Field(1.0, ge=0.01, le=2.0, description="> 1 discourages tokens already seen.")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="OpenAI-style, per token already generated.")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="OpenAI-style, per occurrence generated.")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="Makes sampling reproducible.")
    stop: tuple[str, ...] = Field((), max_length=MAX_STOP_STRINGS, description="Strings that end generation.")
    logit_bias: tuple[tuple[int, float], ...] = Field(
        (), description="(token id, bias from -100 to 100) pairs added to the logits before sampling."
    )
    logprobs: bool = Field(False, description="Record each chosen token's log-probability.")
    top_logprobs: int = Field(
        0, ge=0, le=MAX_TOP_LOGPROBS, description="Also record this many most likely tokens per position."
    )
    constraint: Constraint | None = Field(None, description="A grammar the answer must match.")
    compiled_grammar: Any = Field(
        None,
        exclude=True,
        repr=False,
        description="The constraint compiled for the model's vocabulary before the request was admitted "
        "(``Vocabulary.compile``), so that the engine never waits for a compilation.",
    )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sampling_options(enable_thinking: bool, **overrides: Any) -> SamplingOptions:
    """The mode's defaults with ``overrides`` applied (None values are ignored).

    Raises:
        InvalidRequestError: a value is out of range or unknown; ``param`` names it.
    """
    values = dict(THINKING_DEFAULTS if enable_thinking else NON_THINKING_DEFAULTS)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(values.get("stop"), str):
        values["stop"] = (values["stop"],)
    if "stop" in values:
        values["stop"] = tuple(s for s in values["stop"] if s)
    if isinstance(values.get("logit_bias"), dict):
        values["logit_bias"] = tuple((int(k), float(v)) for k, v in values["logit_bias"].items())
    if enable_thinking and values.get("temperature") == 0:
        log.warning(
            "Greedy decoding is not used in thinking mode; using temperature %s", THINKING_DEFAULTS["temperature"]
        )
        values["temperature"] = THINKING_DEFAULTS["temperature"]
    try:
        return SamplingOptions(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(p) for p in error["loc"]) or None
        raise InvalidRequestError(f"{param}: {error['msg']}", param=param) from exc


@dataclass(frozen=True)
class TokenLogprob:
    """A chosen token's log-probability and, when asked, the most likely tokens at its position.

    Log-probabilities are the model's (log-softmax of its logits after ``logit_bias`` and the grammar
    mask), before temperature, top-k/top-p and penalties, as vLLM reports them.
    """

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class Sampler:
    """Picks next tokens for one request (its own random generator, penalty counts, bias and grammar).

    A pick is two halves, so that a batched step reads the device once for all its rows: ``pick``
    does the device work and returns one small tensor (the token, whether the logits were finite, and
    the log-probability record when asked), and ``commit`` takes that tensor's values, read by the
    caller, and does the host bookkeeping (penalty counts, the grammar, the record).
    """

    def __init__(
        self,
        options: SamplingOptions,
        prompt_ids: list[int],
        eos_ids: tuple[int, ...],
        device: torch.device,
        tokenizer: Any = None,
    ) -> None:
        self.options = options
        self.tokenizer = tokenizer
        self.logprobs: list[TokenLogprob] = []
        self.grammar: GrammarState | None = None
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if options.logit_bias:
            ids, values = zip(*options.logit_bias, strict=True)
            self._bias = (
                torch.tensor(ids, dtype=torch.long, device=device),
                torch.tensor(values, dtype=torch.float32, device=device),
            )
        self.eos_ids = torch.tensor(eos_ids, dtype=torch.long, device=device)
        self._eos = tuple(eos_ids)
        self.device = device
        self.generator = None
        if not options.greedy:
            self.generator = torch.Generator(device=device)
            if options.seed is not None:
                self.generator.manual_seed(options.seed)
            else:
                self.generator.seed()
        self.counts: torch.Tensor | None = None
        # Tokens seen (prompt and reply), for the repetition penalty: a mask over the vocabulary, so
        # marking one more token needs no read of the device (``unique`` on an id list would).
        self._prompt_ids = sorted(set(prompt_ids)) if options.repetition_penalty != 1.0 else None
        self.seen: torch.Tensor | None = None
        self.vocab_size = 0  # the logits' width, known at the first pick

    @property
    def record_size(self) -> int:
        """Values per ``pick``: token, finite flag, then (with logprobs) its logprob and top ids and logprobs."""
        return 2 + (1 + 2 * self.options.top_logprobs if self.options.logprobs else 0)

    def _penalize(self, logits: torch.Tensor) -> torch.Tensor:
        opts = self.options
        if self._prompt_ids is not None:
            if self.seen is None:
                self.seen = torch.zeros(logits.numel(), dtype=torch.bool, device=logits.device)
                ids = [i for i in self._prompt_ids if 0 <= i < logits.numel()]
                self.seen[torch.tensor(ids, dtype=torch.long, device=logits.device)] = True
            penalized = torch.where(logits > 0, logits / opts.repetition_penalty, logits * opts.repetition_penalty)
            logits = torch.where(self.seen, penalized, logits)
        if self.counts is not None and (opts.presence_penalty or opts.frequency_penalty):
            logits -= opts.frequency_penalty * self.counts + opts.presence_penalty * (self.counts > 0).float()
        return logits

    def _grammar_for(self, vocab_size: int) -> GrammarState | None:
        if self.options.constraint is None:
            return None
        if self.grammar is None:
            if self.tokenizer is None:
                raise ValueError("a constrained request needs the tokenizer passed to its Sampler")
            vocab = vocabulary(self.tokenizer, vocab_size, self._eos)
            self.grammar = GrammarState(self.options.constraint, vocab, self.options.compiled_grammar)
        return self.grammar

    def choose(self, logits: torch.Tensor, generated: int) -> tuple[int, TokenLogprob | None]:
        """The next token from last-position logits [vocab], and its log-probability record when asked."""
        token = self.next_token(logits, generated)
        return token, self.logprobs[-1] if self.options.logprobs else None

    def next_token(self, logits: torch.Tensor, generated: int) -> int:
        """Pick the next token from last-position logits [vocab] (``pick`` and ``commit`` with one read).

        Raises:
            ValueError: the logits hold inf or NaN.
        """
        values = self.pick(logits, generated).tolist()
        if not values[1]:
            raise ValueError("the logits hold inf or NaN")
        return self.commit(values)

    def pick(self, logits: torch.Tensor, generated: int) -> torch.Tensor:
        """The device half of a pick from last-position logits [vocab]; nothing is read to the host.

        Returns a float64 tensor of ``record_size`` values: the token, 1.0 if every logit was finite
        (else 0.0, and the token means nothing), then with logprobs the token's log-probability, the
        ``top_logprobs`` most likely ids and their log-probabilities. Hand its values to ``commit``.
        """
        opts = self.options
        self.vocab_size = logits.numel()
        finite = torch.isfinite(logits.sum(dtype=torch.float32))  # one pass: any inf or NaN makes the sum so
        logits = logits.float().clone()
        if self._bias is not None:
            ids, values = self._bias
            logits[ids] += values
        grammar = self._grammar_for(logits.numel())
        if grammar is not None:
            grammar.mask(logits)
        if generated < opts.min_new_tokens and not (grammar is not None and grammar.active):
            logits[self.eos_ids] = float("-inf")
        model_logprobs = torch.log_softmax(logits, dim=-1) if opts.logprobs else None
        logits = self._penalize(logits)
        if opts.greedy:
            token = torch.argmax(logits).reshape(1)
        else:
            # Shift by the maximum first: any temperature > 0, however small, then gives finite values or -inf.
            logits = (logits - logits.max()) / opts.temperature
            if opts.top_k:
                values, indices = torch.topk(logits, min(opts.top_k, logits.numel()))
            else:
                values, indices = torch.sort(logits, descending=True)
            probs = torch.softmax(values, dim=-1)
            if opts.top_p < 1.0:
                cumulative = torch.cumsum(probs, dim=-1)
                keep = cumulative - probs < opts.top_p
                keep[0] = True  # the most likely token survives any top_p (one below float32's range too)
                probs = torch.where(keep, probs, torch.zeros_like(probs))
            if opts.min_p > 0.0:
                probs = torch.where(probs >= opts.min_p * probs[0], probs, torch.zeros_like(probs))
            # A degenerate distribution (inf/NaN, or nothing left) takes the most likely token, decided on
            # the device: the distribution becomes that one token.
            usable = torch.isfinite(probs).all() & (probs.sum() > 0.0)
            first = torch.zeros_like(probs)
            first[0] = 1.0
            probs = torch.where(usable, probs, first)
            token = indices.index_select(0, torch.multinomial(probs, 1, generator=self.generator))
        # index_select, not indexing by a 0-d tensor: that would read the index back to the host.
        parts = [token.double(), finite.reshape(1).double()]
        if model_logprobs is not None:
            parts.append(model_logprobs.index_select(0, token).double())
            if opts.top_logprobs:
                top_values, top_ids = torch.topk(model_logprobs, min(opts.top_logprobs, model_logprobs.numel()))
                parts += [top_ids.double(), top_values.double()]
        return torch.cat(parts)

    def commit(self, values: list[float]) -> int:
        """The host half of a pick: ``values`` are the ``pick`` tensor's, read by the caller. Returns the token."""
        token = int(values[0])
        opts = self.options
        if opts.presence_penalty or opts.frequency_penalty:
            if self.counts is None:
                self.counts = torch.zeros(self.vocab_size, device=self.device)
            self.counts[token] += 1
        if self.seen is not None:
            self.seen[token] = True
        if self.grammar is not None:
            self.grammar.accept(token)
        if opts.logprobs:
            top: tuple[tuple[int, float], ...] = ()
            count = (len(values) - 3) // 2
            if count:
                ids, logprobs = values[3 : 3 + count], values[3 + count :]
                top = tuple((int(i), float(v)) for i, v in zip(ids, logprobs, strict=True))
            self.logprobs.append(TokenLogprob(token, float(values[2]), top))
        return token
