"""Constrained decoding with xgrammar: a grammar that masks each step's logits to the tokens it allows.

A ``Constraint`` says what the answer must be (JSON matching a schema, any JSON object, or an EBNF
grammar such as a tool call); ``GrammarState`` is one request's matcher over the loaded tokenizer.
xgrammar is the grammar engine vLLM and SGLang use: it compiles the grammar against the vocabulary
once (cached per tokenizer and grammar) and fills a token bitmask per step on the CPU.

With ``after_thinking`` the thinking stays free: the mask applies from the token after ``</think>``
(an optional blank line is allowed there, as the model writes one). Once the grammar is complete
only an end-of-turn token is allowed, so a constrained reply always ends with valid output unless
``max_tokens`` cuts it first.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Literal

import torch
import xgrammar as xgr

from ..errors import InvalidRequestError

log = logging.getLogger(__name__)
THINK_CLOSE = "</think>"
# What may precede the constrained answer: the blank line Qwen3 writes after </think>.
LEADING_NEWLINES = '"\\n"{0,2}'
ENGINE_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


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
        """The xgrammar grammar of the answer, with the optional blank line in front.

        Raises:
            InvalidRequestError: the schema cannot be compiled (param ``response_format``).
        """
        schema = self.schema if self.kind == "json_schema" else '{"type": "object"}'
        try:
            # Compact separators (", " and ": ") as Qwen3 writes JSON: no unbounded whitespace runs.
            value = xgr.Grammar.from_json_schema(schema, any_whitespace=False)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise InvalidRequestError(
                f"The JSON schema cannot be used for constrained decoding: {engine_message(exc)}",
                param=self.param,
                fix="Send a valid JSON Schema (type, properties, required, enum, items, anyOf...).",
            ) from exc
        before, after = self.wrap
        one = [literal(before), value, literal(after)] if before or after else [value]
        options = []
        for count in range(1, self.max_count + 1):
            parts = list(one)
            for _ in range(count - 1):
                parts += [literal(self.separator), *one]
            options.append(xgr.Grammar.concat(*parts))
        answer = options[0] if len(options) == 1 else xgr.Grammar.union(*options)
        return xgr.Grammar.concat(xgr.Grammar.from_ebnf(f"root ::= {LEADING_NEWLINES}"), answer)


def engine_message(exc: BaseException) -> str:
    """xgrammar's error without the C++ time stamp and source location it starts with."""
    return ENGINE_PREFIX.sub("", str(exc)).strip()


def literal(text: str) -> xgr.Grammar:
    """A grammar that matches exactly ``text``."""
    return xgr.Grammar.from_ebnf(f"root ::= {json.dumps(text)}")


class Vocabulary:
    """xgrammar's view of one tokenizer (token bytes, stop tokens) and its grammar compiler."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: tuple[int, ...]) -> None:
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=list(eos_ids))
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1)
        self.vocab_size = vocab_size
        think = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
        self.think_close_id: int | None = think if isinstance(think, int) and think >= 0 else None
        self._compiled: dict[Constraint, xgr.CompiledGrammar] = {}
        self._lock = threading.Lock()

    def compile(self, constraint: Constraint) -> xgr.CompiledGrammar:
        with self._lock:
            if constraint not in self._compiled:
                if len(self._compiled) >= 64:  # bounded: schemas differ per client
                    self._compiled.pop(next(iter(self._compiled)))
                try:
                    self._compiled[constraint] = self.compiler.compile_grammar(constraint.grammar())
                except RuntimeError as exc:
                    raise InvalidRequestError(
                        f"The grammar for {constraint.param} cannot be compiled: {engine_message(exc)}",
                        param=constraint.param,
                    ) from exc
            return self._compiled[constraint]

    @functools.cached_property
    def token_bytes(self) -> list[bytes]:
        """The raw bytes of every token (for logprobs' ``bytes``)."""
        return [bytes(b) for b in self.info.decoded_vocab]


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

    def __init__(self, constraint: Constraint, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.matcher = xgr.GrammarMatcher(vocab.compile(constraint))
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
