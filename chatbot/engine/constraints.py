"""Constrained decoding with xgrammar: a grammar that masks each step's logits to the tokens it allows.

A ``Constraint`` says what the answer must be (JSON matching a schema, any JSON object, or an EBNF
grammar such as a tool call); ``GrammarState`` is one request's matcher over the loaded tokenizer.
xgrammar is the grammar engine vLLM and SGLang use: it compiles the grammar against the vocabulary
once (cached per tokenizer and grammar; in a worker process with a time and memory bound, see
``grammar_compile.py``) and fills a token bitmask per step on the CPU.

With ``after_thinking`` the thinking stays free: the mask applies from the token after ``</think>``
(an optional blank line is allowed there, as the model writes one). Once the grammar is complete
only an end-of-turn token is allowed, so a constrained reply always ends with valid output unless
``max_tokens`` cuts it first.
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import torch
import xgrammar as xgr

from ..errors import InvalidRequestError
from .grammar_compile import COMPILER, Cancelled
from .grammar_worker import build_grammar, engine_message

log = logging.getLogger(__name__)
THINK_CLOSE = "</think>"
# Compiled grammars (and refusals) kept per vocabulary: schemas differ per client.
CACHED_GRAMMARS = 64


@dataclass(frozen=True)
class Constraint:
    """What the answer must match: JSON, optionally wrapped in literal text and repeated.

    kind: "json_schema" (``schema`` is the JSON Schema as text) or "json_object" (any JSON object).
    ``wrap`` is literal text before and after each JSON value (e.g. ``<tool_call>`` tags);
    ``max_count`` > 1 allows 1 to ``max_count`` values joined by ``separator``.
    """

    kind: Literal["json_schema", "json_object"]
    schema: str = ""
    wrap: tuple[str, str] = ("", "")
    separator: str = "\n"
    max_count: int = 1
    after_thinking: bool = False
    param: str = "response_format"  # the request field an unusable schema came from

    def grammar(self) -> xgr.Grammar:
        """The xgrammar grammar of the answer, with the optional blank line in front (built in this process;
        ``Vocabulary.compile`` builds and compiles it in the bounded worker).

        Raises:
            InvalidRequestError: the schema cannot be compiled (param ``response_format``).
        """
        try:
            return build_grammar(**self.fields())
        except (RuntimeError, ValueError, TypeError) as exc:
            raise InvalidRequestError(
                f"The JSON schema cannot be used for constrained decoding: {engine_message(exc)}",
                param=self.param,
                fix="Send a valid JSON Schema (type, properties, required, enum, items, anyOf...).",
            ) from exc

    def fields(self) -> dict[str, Any]:
        """``grammar_worker.build_grammar``'s arguments for this constraint."""
        return {
            "kind": self.kind,
            "schema": self.schema,
            "wrap": list(self.wrap),
            "separator": self.separator,
            "max_count": self.max_count,
        }


class Vocabulary:
    """xgrammar's view of one tokenizer (token bytes, stop tokens) and its grammar compiler."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: tuple[int, ...]) -> None:
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(eos_ids))
        self.vocab_size = vocab_size
        think = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
        self.think_close_id: int | None = think if isinstance(think, int) and think >= 0 else None
        self.key = uuid.uuid4().hex  # names this vocabulary to the compiler's worker
        self._compiled: dict[Constraint, xgr.CompiledGrammar] = {}
        self._refused: dict[Constraint, InvalidRequestError] = {}
        self._lock = threading.Lock()  # guards the two caches only, never held while compiling

    def compile(self, constraint: Constraint, cancel: threading.Event | None = None) -> xgr.CompiledGrammar | None:
        """The constraint's grammar compiled for this vocabulary: cached, else compiled by the bounded worker
        (``grammar_compile.COMPILER``) on the caller's thread. None when ``cancel`` was set meanwhile.

        Raises:
            InvalidRequestError: the schema is unusable, or past the compiler's time or memory bound (a
                refusal is remembered: the same schema is refused again at once).
            QueueFullError: other requests' grammars kept the compiler busy too long.
        """
        with self._lock:
            compiled = self._compiled.get(constraint)
            refused = self._refused.get(constraint)
        if compiled is not None:
            return compiled
        if refused is not None:
            raise InvalidRequestError(refused.message, param=refused.param, fix=refused.fix)
        try:
            text = COMPILER.compile(self.key, self.info_json, constraint.fields(), constraint.param, cancel)
        except Cancelled:
            return None
        except InvalidRequestError as exc:
            with self._lock:
                remember(self._refused, constraint, exc)
            raise
        compiled = xgr.CompiledGrammar.deserialize_json(text, self.info)
        with self._lock:
            remember(self._compiled, constraint, compiled)
        return compiled

    def info_json(self) -> str:
        """The tokenizer info as the compiler's worker takes it (a few MB for Qwen3's vocabulary)."""
        return str(self.info.serialize_json())

    @functools.cached_property
    def token_bytes(self) -> list[bytes]:
        """The raw bytes of every token (for logprobs' ``bytes``)."""
        return [bytes(b) for b in self.info.decoded_vocab]


def remember(cache: dict[Constraint, Any], constraint: Constraint, value: Any) -> None:
    """Add to a bounded cache, dropping the oldest entry."""
    if constraint not in cache and len(cache) >= CACHED_GRAMMARS:
        cache.pop(next(iter(cache)))
    cache[constraint] = value


_VOCABULARIES: dict[tuple[int, int], Vocabulary] = {}
_VOCAB_LOCK = threading.Lock()


def vocabulary(tokenizer: Any, vocab_size: int, eos_ids: tuple[int, ...]) -> Vocabulary:
    """The (cached) ``Vocabulary`` of a loaded tokenizer; building it reads the whole vocabulary once."""
    key = (id(tokenizer), vocab_size)
    with _VOCAB_LOCK:
        if key not in _VOCABULARIES:
            if len(_VOCABULARIES) >= 4:  # one per loaded model; tests load several
                _VOCABULARIES.pop(next(iter(_VOCABULARIES)))
            _VOCABULARIES[key] = Vocabulary(tokenizer, vocab_size, eos_ids)
        return _VOCABULARIES[key]


class GrammarState:
    """One request's grammar: masks logits while active, advances with each chosen token."""

    def __init__(self, constraint: Constraint, vocab: Vocabulary, compiled: xgr.CompiledGrammar | None = None) -> None:
        """``compiled``: the constraint's grammar, compiled before the request was admitted; without it the
        grammar is compiled here (bounded, but on this thread: callers outside the servers)."""
        self.vocab = vocab
        compiled = compiled if compiled is not None else vocab.compile(constraint)
        assert compiled is not None  # no cancel signal: compile returns a grammar or raises
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab.vocab_size)
        # Thinking first (when the prompt opens it): the grammar waits for </think>.
        self.active = not (constraint.after_thinking and vocab.think_close_id is not None)

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids to -inf, in place (float32 [vocab] on CPU or GPU)."""
        if not self.active or self.matcher.is_terminated():
            return
        self.matcher.fill_next_token_bitmask(self.bitmask)
        bitmask = self.bitmask.to(logits.device)
        # The model's output may be wider than the tokenizer (padding rows); those ids stay forbidden.
        width = min(logits.shape[-1], self.vocab.vocab_size)
        view = logits[:width].unsqueeze(0)
        xgr.apply_token_bitmask_inplace(view, bitmask, vocab_size=width)
        if logits.shape[-1] > width:
            logits[width:] = float("-inf")

    def accept(self, token: int) -> None:
        if not self.active:
            self.active = token == self.vocab.think_close_id
            return
        if self.matcher.is_terminated():
            return
        if not self.matcher.accept_token(token):
            log.warning("the grammar refused token %d; the rest of the reply is unconstrained", token)
            self.active = False
