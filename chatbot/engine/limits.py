"""The server's bounds on one reply, whatever answers it: a local model or a remote server.

``ReplyLimits`` holds ``--max-new-tokens-cap`` and ``--max-generation-seconds``. Requests are checked
against them when they are built (``chat/request.py``), so a front started with ``--backend`` refuses
and cuts replies exactly as a server with the model loaded does; the engine holds the same value and
checks what is submitted to it directly (``batch``, the library).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError


@dataclass(frozen=True)
class ReplyLimits:
    """``max_new_tokens_cap``: most tokens one reply may generate; ``max_generation_seconds``: longest it may
    run (then it ends with finish reason "length"). None: no bound (the context still bounds tokens)."""

    max_new_tokens_cap: int | None = None
    max_generation_seconds: float | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> ReplyLimits:
        return cls(settings.max_new_tokens_cap, settings.max_generation_seconds)

    def check_max_new_tokens(self, requested: int, param: str = "max_tokens") -> None:
        """Refuse a reply longer than the cap (as vLLM refuses one longer than the context).

        Raises:
            InvalidRequestError: ``requested`` is over the cap.
        """
        cap = self.max_new_tokens_cap
        if cap is not None and requested > cap:
            raise InvalidRequestError(
                f"{param} is {requested}, but this server generates at most {cap} tokens per reply.",
                param=param,
                fix=f"Ask for {cap} or fewer, or start the server with a larger --max-new-tokens-cap.",
            )

    def bound(self, tokens: int) -> int:
        """``tokens``, at most the cap."""
        return min(tokens, self.max_new_tokens_cap or tokens)
