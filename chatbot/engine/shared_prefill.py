"""One prompt read once for several choices: the API's ``n`` runs as ``n`` requests sharing a prefill.

The choices of one request (``n`` > 1) are ``n`` jobs in the continuous batch with the same prompt and
their own samplers (each with its own seed). They carry one ``SharedPrefill``: the first of them to read
the prompt publishes itself (its cache then holds the prompt's keys and values as its first tokens) and
the prompt's last logits; every other choice that reaches the batch while it runs takes a copy of that
part of the cache and picks its first token from the same logits (``scheduler.Batch``), with no prefill
of its own. A copied cache holds the very numbers the prefill wrote, so a seeded choice is token for
token the reply the same seed gets alone wherever decoding is batch invariant (``QWEN_BATCH_INVARIANT=1``).

A choice that reaches the batch after the publisher has ended (it finished, failed or was cancelled)
reads the prompt itself, as a request alone does. Everything here runs on the engine's worker thread.
"""

from __future__ import annotations

from typing import Any

import torch

from .kv_cache import copy_prefix

# The requests are ``request.ActiveRequest``s; named loosely here, as the job that holds this value
# (jobs.py) is imported by request.py.
ActiveRequest = Any


class SharedPrefill:
    """The prompt cache and last logits that the choices of one request share (see the module docstring)."""

    def __init__(self) -> None:
        self.holder: ActiveRequest | None = None
        self.logits: torch.Tensor | None = None  # [1, vocab]: the prompt's last position

    @property
    def available(self) -> bool:
        """A choice has read the prompt and is still running: others need not read it."""
        return self.holder is not None

    def publish(self, request: ActiveRequest, logits: torch.Tensor) -> None:
        """``request`` has read its prompt (its cache holds exactly the prompt) and ``logits`` [1, vocab] are
        the last position's; the first to publish stays the source until it ends."""
        if self.holder is None:
            self.holder, self.logits = request, logits[-1:]

    def drop(self, request: ActiveRequest) -> None:
        """``request`` ended (its cache goes to the prefix cache or away): it can no longer be copied."""
        if self.holder is request:
            self.holder = self.logits = None

    def serves(self, request: ActiveRequest) -> bool:
        """Whether ``request`` (still reading its prompt) can take the published prompt instead."""
        holder = self.holder
        return (
            holder is not None
            and holder is not request
            and request.prefilling
            and holder.job.prompt_ids == request.job.prompt_ids
        )

    def copy_cache(self, config: Any) -> Any:
        """A new cache holding the prompt's keys and values (copied), or None when the cache's layers
        cannot be copied that way (then the choice reads the prompt itself)."""
        assert self.holder is not None
        return copy_prefix(self.holder.cache, len(self.holder.job.prompt_ids), config)
