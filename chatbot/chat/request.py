"""``ChatRequest``: one reply asked for, as one frozen value, built and validated once.

The API, the web chat, ``Qwen3ChatBot`` and the terminal chat build one with ``ChatRequest.build`` and
hand it to a backend (``backend.stream(request, cancel)``); whatever answers (the model loaded here or
a remote server) reads the same value. Building it normalizes the messages, applies ``/think`` and
``/no_think``, validates the sampling options and the tools / structured-output combination, and
applies the server's bounds on one reply (``ReplyLimits``): a ``max_new_tokens`` over the cap is
refused here, before anything is tokenized or sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine.jobs import LOCAL_CLIENT
from ..engine.limits import ReplyLimits
from ..engine.sampling import SamplingOptions, sampling_options
from ..engine.shared_prefill import SharedPrefill
from ..errors import InvalidRequestError
from .prompt import effective_thinking, normalize_messages, thinking_is_open
from .structured import response_format_constraint
from .tools import check_tools_size, tool_call_constraint

# The most a reply may ask for (SamplingOptions' own bound): "the room left" with no cap at all.
MAX_NEW_TOKENS = 131072


@dataclass(frozen=True)
class ChatRequest:
    """A validated request for one reply; build it with ``ChatRequest.build``.

    Attributes:
        messages: the normalized conversation (``prompt.normalize_messages``); ending with an assistant
            message continues it.
        continue_final_message: the reply writes on from that last assistant message (its thinking, if it
            was cut there, or its answer) instead of starting a new one; the same message grows.
        thinking: the thinking switch after the newest user message's ``/think`` or ``/no_think``.
        options: sampling options with the mode's defaults, the grammar constraint of ``tool_choice`` or
            ``response_format``, and ``logit_bias``; ``max_new_tokens`` is within the server's cap.
        fill_context: no ``max_new_tokens`` was asked with ``strict_context``: the reply may take the room
            left in the context, at most ``options.max_new_tokens`` (the cap).
        tools: the function tools offered to the model (None with ``tool_choice`` "none").
        tool_choice, parallel_tool_calls: OpenAI's fields, as given.
        response_format: json_object or json_schema (None for plain text).
        strict_context: the API's rules: never drop turns (a conversation that does not fit is a
            ``ContextLengthError``).
        client: who asks (API key or address, browser session): requests take fair turns by client.
        limits: the server's bounds this request was built under.
        choice: which of a request's ``n`` choices this is (0 for a single reply); see ``as_choice``.
        shared_prefill: the ``SharedPrefill`` the choices of one request share (a local model reads their
            prompt once); None for a single reply.
    """

    messages: tuple[dict[str, Any], ...]
    thinking: bool
    options: SamplingOptions
    fill_context: bool = False
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True
    response_format: dict[str, Any] | None = None
    strict_context: bool = False
    client: str = LOCAL_CLIENT
    limits: ReplyLimits = field(default_factory=ReplyLimits)
    choice: int = 0
    shared_prefill: SharedPrefill | None = None
    continue_final_message: bool = False

    @classmethod
    def build(
        cls,
        messages: Sequence[dict[str, Any]],
        *,
        enable_thinking: bool = False,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        parallel_tool_calls: bool = True,
        response_format: dict[str, Any] | None = None,
        strict_context: bool = False,
        client: str = LOCAL_CLIENT,
        limits: ReplyLimits | None = None,
        continue_final_message: bool | None = None,
        **sampling: Any,
    ) -> ChatRequest:
        """Validate a request.

        Args:
            messages: [{"role", "content"}...]; assistant contents are re-sent answer-only.
            enable_thinking: thinking mode (``/think`` or ``/no_think`` in the last user message overrides it).
            tools: OpenAI-style function tools, rendered by the chat template.
            tool_choice: "auto" (default with tools), "none", "required" or {"type": "function", "function":
                {"name": ...}}; the last two are enforced by constrained decoding.
            parallel_tool_calls: with "required", allow several calls in one reply; false keeps the first.
            response_format: {"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}}.
            strict_context: the API's rules (see the class); no ``max_new_tokens`` then means the room left.
            client: who asks, for fair turns.
            limits: the server's bounds on one reply (``backend.limits``); None: none.
            continue_final_message: True asks to continue the last message, which must be the assistant's
                (vLLM's field); None (or False) lets the last message decide: an assistant's is continued.
            **sampling: ``SamplingOptions`` fields (temperature, max_new_tokens, logit_bias, logprobs, ...);
                None values take the mode's defaults.
        Raises:
            InvalidRequestError: bad messages or options, ``max_new_tokens`` over the server's cap, or tools or a
                schema over their bounds (``tools.MAX_TOOLS``, ``MAX_TOOLS_BYTES``, ``structured.MAX_SCHEMA_BYTES``).
        """
        limits = limits or ReplyLimits()
        check_tools_size(list(tools or []))  # counted before any work is spent on them
        clean = normalize_messages(messages)
        continues = clean[-1]["role"] == "assistant"
        if continue_final_message and not continues:
            raise InvalidRequestError(
                "continue_final_message needs the last message to be the assistant's (the reply to continue)",
                param="continue_final_message",
            )
        thinking = effective_thinking(clean, enable_thinking)
        after_thinking = thinking and (not continues or thinking_is_open(clean[-1]))
        constraint = tool_call_constraint(
            list(tools or []), tool_choice, parallel=parallel_tool_calls, after_thinking=after_thinking
        )
        plain_text = response_format in (None, {"type": "text"})
        if constraint is not None and not plain_text:
            raise InvalidRequestError(
                "response_format cannot be combined with tool_choice required or a named function",
                param="response_format",
            )
        constraint = constraint or response_format_constraint(response_format, after_thinking=after_thinking)
        bias = logit_bias_pairs(sampling.pop("logit_bias", None))
        requested = sampling.get("max_new_tokens")
        options = sampling_options(thinking, **sampling, constraint=constraint, logit_bias=bias)
        fill_context = strict_context and requested is None
        if requested is not None:
            limits.check_max_new_tokens(options.max_new_tokens)
        elif fill_context:  # the room left, known once the prompt is: at most the cap
            options = options.model_copy(update={"max_new_tokens": limits.max_new_tokens_cap or MAX_NEW_TOKENS})
        else:  # the mode's default, within the cap
            options = options.model_copy(update={"max_new_tokens": limits.bound(options.max_new_tokens)})
        return cls(
            messages=tuple(clean),
            thinking=thinking,
            options=options,
            fill_context=fill_context,
            tools=tuple(tools) if tools and tool_choice != "none" else None,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            response_format=None if plain_text else response_format,
            strict_context=strict_context,
            client=client,
            limits=limits,
            continue_final_message=continues,
        )

    @property
    def continues(self) -> bool:
        """The conversation ends with an assistant message: the reply writes on from it."""
        return self.continue_final_message

    @property
    def max_calls(self) -> int | None:
        """Most tool calls kept from one reply (``parallel_tool_calls: false`` keeps the first)."""
        return None if self.parallel_tool_calls else 1

    def as_choice(self, index: int, shared: SharedPrefill) -> ChatRequest:
        """Choice ``index`` of a request for several: the seed (if any) becomes ``seed + index`` so the
        choices differ yet each can be reproduced alone; ``shared`` is one value for all the choices."""
        options = self.options
        if options.seed is not None:
            options = options.model_copy(update={"seed": options.seed + index})
        return replace(self, options=options, choice=index, shared_prefill=shared)

    def with_messages(self, messages: Sequence[dict[str, Any]]) -> ChatRequest:
        """The same request over other (already normalized) messages, e.g. with the oldest turn left out."""
        return replace(self, messages=tuple(messages))


def logit_bias_pairs(logit_bias: dict[Any, Any] | None) -> tuple[tuple[int, float], ...]:
    """``logit_bias`` as (token id, bias) pairs; the ids are checked against the vocabulary by the backend
    that has one.

    Raises:
        InvalidRequestError: a key that is not a token id, or a bias outside -100 to 100.
    """
    if not logit_bias:
        return ()
    if not isinstance(logit_bias, dict):
        raise InvalidRequestError("logit_bias must map token ids to biases", param="logit_bias")
    pairs = []
    for key, bias in logit_bias.items():
        is_id = isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit())
        if not is_id or int(key) < 0:
            raise InvalidRequestError(f"logit_bias has the key {key!r}, which is not a token id", param="logit_bias")
        try:
            value = float(bias)
        except (TypeError, ValueError):
            value = float("nan")
        if not -100 <= value <= 100:
            raise InvalidRequestError(f"logit_bias[{key!r}] is {bias}; use -100 to 100", param="logit_bias")
        pairs.append((int(key), value))
    return tuple(pairs)
