"""Chat on top of the engine: typed streaming events with thinking and answer apart, and history.

``stream_reply`` is the one function the bot, the web UI and the API all call: it waits for the
model (yielding ``Loading`` progress), builds the prompt, streams ``ThinkingDelta``/``AnswerDelta``
events and ends with ``ChatDone``, which carries the authoritative split, the finish reason and
the stats. ``Conversation`` keeps one chat's history: answers are re-sent to the model, thinking is
kept beside them for display.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..engine.constraints import Vocabulary, vocabulary
from ..engine.engine import ChatEngine, Failed, Finished, Queued, TextDelta
from ..engine.jobs import LOCAL_CLIENT
from ..engine.sampling import sampling_options
from ..errors import ChatbotError, InvalidRequestError
from ..model.loader import LoadedModel
from .backend import StreamingBackend
from .logprobs import StreamedLogprobs, answer_records, openai_logprobs
from .prompt import build_prompt, effective_thinking, normalize_messages
from .structured import response_format_constraint
from .thinking import ThinkingStreamSplitter, split_thinking
from .tools import ToolCall, ToolCallStream, parse_tool_calls, tool_call_constraint

LOADING_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Loading:
    stage: str
    fraction: float


@dataclass(frozen=True)
class QueuePosition:
    position: int
    paused: bool = False  # the reply stopped part-way to give someone else a turn; it continues by itself


@dataclass(frozen=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True)
class AnswerDelta:
    text: str
    # With logprobs asked for: OpenAI's entries for the answer tokens that arrived with this piece.
    logprobs: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ToolCallDelta:
    """A whole tool call parsed from the streaming answer; ``index`` counts the reply's calls from 0."""

    index: int
    call: ToolCall


@dataclass(frozen=True)
class ChatDone:
    thinking: str
    answer: str  # without tool-call blocks when tools were offered
    full_response: str
    finish_reason: str  # "stop", "length", "tool_calls" or "cancelled"
    enable_thinking: bool
    stats: dict[str, Any]
    dropped_messages: int = 0
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: dict[str, Any] | None = None  # OpenAI's {"content": [...]} when asked for

    def as_dict(self) -> dict[str, Any]:
        return {
            "thinking": self.thinking,
            "answer": self.answer,
            "full_response": self.full_response,
            "finish_reason": self.finish_reason,
            "stats": self.stats,
        }


ChatEvent = Loading | QueuePosition | ThinkingDelta | AnswerDelta | ToolCallDelta | ChatDone


def wait_for_model(engine: ChatEngine) -> Iterator[Loading]:
    """Yield progress until the engine's model is ready; raises the load error if loading fails."""
    if engine.loaded is not None:
        return
    engine.start_loading()
    while engine.loaded is None:
        if engine.load_error is not None:
            raise engine.load_error
        stage, fraction = engine.progress.snapshot()
        yield Loading(stage, fraction)
        time.sleep(LOADING_POLL_SECONDS)


def model_vocabulary(loaded: LoadedModel) -> Vocabulary:
    return vocabulary(loaded.tokenizer, int(loaded.model.config.vocab_size), tuple(loaded.eos_token_ids))


def check_logit_bias(logit_bias: dict[Any, float] | None, vocab_size: int) -> dict[int, float] | None:
    """``logit_bias`` with integer token ids; raises InvalidRequestError for an id outside the vocabulary."""
    if not logit_bias:
        return None
    checked = {}
    for key, bias in logit_bias.items():
        token = int(key) if isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit()) else -1
        if not 0 <= token < vocab_size:
            raise InvalidRequestError(
                f"logit_bias has the key {key!r}, which is not a token id of this model (0 to {vocab_size - 1})",
                param="logit_bias",
            )
        if not -100 <= float(bias) <= 100:
            raise InvalidRequestError(f"logit_bias[{key!r}] is {bias}; use -100 to 100", param="logit_bias")
        checked[token] = float(bias)
    return checked


def stream_reply(
    engine: ChatEngine | StreamingBackend,
    messages: Sequence[dict[str, Any]],
    *,
    enable_thinking: bool = False,
    cancel: threading.Event | None = None,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
    response_format: dict[str, Any] | None = None,
    strict_context: bool = False,
    client: str = LOCAL_CLIENT,
    **generation_kwargs: Any,
) -> Iterator[ChatEvent]:
    """Stream the assistant's reply to ``messages``.

    Args:
        engine: the shared engine, or a ``RemoteBackend`` (another OpenAI-compatible server).
        messages: [{"role", "content"}...]; assistant contents are re-sent answer-only. Ending with an
            assistant message continues it.
        enable_thinking: thinking mode (``/think`` or ``/no_think`` in the last user message overrides it).
        cancel: set it to stop the generation; the stream then ends with finish_reason "cancelled".
        tools: OpenAI-style function tools, rendered by the chat template; calls in the answer become
            ``ToolCallDelta`` events and ``ChatDone.tool_calls``.
        tool_choice: "auto" (default with tools), "none", "required" or {"type": "function", "function":
            {"name": ...}}; the last two are enforced by constrained decoding.
        parallel_tool_calls: with "required", allow several calls in one reply.
        response_format: {"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}}.
        strict_context: the API's rules: never drop turns (a conversation that does not fit is a
            ContextLengthError in OpenAI's words), and no max_new_tokens means the room left (at most
            the engine's ``max_new_tokens_cap``; asking for more than the cap is an InvalidRequestError).
        **generation_kwargs: sampling options (see ``SamplingOptions``), e.g. temperature, max_new_tokens,
            logit_bias, logprobs, top_logprobs.
        client: who asks (API key or address, browser session): requests take fair turns by client.
    Raises:
        InvalidRequestError, ContextLengthError: bad messages or options; nothing was generated.
        QueueFullError: too many requests waiting.
        GenerationError: generation failed part-way.
        BackendError, BackendUnavailableError: from a remote backend (see ``chat/remote.py``).
    """
    if not isinstance(engine, ChatEngine):  # a remote backend (chat/backend.py) streams its own replies
        yield from engine.stream_reply(
            messages,
            enable_thinking=enable_thinking,
            cancel=cancel,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            response_format=response_format,
            strict_context=strict_context,
            client=client,
            **generation_kwargs,
        )
        return
    clean = normalize_messages(messages)
    thinking = effective_thinking(clean, enable_thinking)
    continues = clean[-1]["role"] == "assistant"
    offered = tools if tools and tool_choice != "none" else None
    after_thinking = thinking and not continues
    constraint = tool_call_constraint(
        tools or [], tool_choice, parallel=parallel_tool_calls, after_thinking=after_thinking
    )
    if constraint is not None and response_format not in (None, {"type": "text"}):
        raise InvalidRequestError(
            "response_format cannot be combined with tool_choice required or a named function",
            param="response_format",
        )
    constraint = constraint or response_format_constraint(response_format, after_thinking=after_thinking)
    raw_bias = generation_kwargs.pop("logit_bias", None)
    requested_max = generation_kwargs.get("max_new_tokens")
    if strict_context and requested_max is None:
        generation_kwargs["max_new_tokens"] = 1  # replaced by the room left once the prompt is known
    options = sampling_options(thinking, **generation_kwargs, constraint=constraint)
    if requested_max is not None:
        engine.check_max_new_tokens(options.max_new_tokens)  # the server's cap: a 400 before any tokenizing
    yield from wait_for_model(engine)
    loaded = engine.load()
    vocab_size = int(loaded.model.config.vocab_size)
    bias = check_logit_bias(raw_bias, vocab_size)
    vocab = model_vocabulary(loaded) if (constraint is not None or options.logprobs) else None
    if constraint is not None:
        assert vocab is not None
        vocab.compile(constraint)  # a schema the grammar engine refuses is a 400 before anything runs
    prompt = build_prompt(
        loaded.tokenizer,
        clean,
        enable_thinking=thinking,
        max_context=loaded.max_context,
        max_new_tokens=requested_max if strict_context else options.max_new_tokens,
        tools=offered,
        trim=not strict_context,
    )
    updates: dict[str, Any] = {"logit_bias": tuple((bias or {}).items())}
    if requested_max is None:  # the room left (API) or the mode's default, within the server's cap
        room = loaded.max_context - len(prompt.ids) if strict_context else options.max_new_tokens
        updates["max_new_tokens"] = min(room, engine.max_new_tokens_cap or room)
    options = options.model_copy(update=updates)
    max_calls = None if parallel_tool_calls else 1
    yield from run_reply(
        engine, loaded, prompt, options, cancel, thinking, offered is not None, vocab, max_calls, client
    )


def run_reply(
    engine: ChatEngine,
    loaded: LoadedModel,
    prompt: Any,
    options: Any,
    cancel: threading.Event | None,
    thinking: bool,
    parse_tools: bool,
    vocab: Vocabulary | None,
    max_calls: int | None = None,
    client: str = LOCAL_CLIENT,
) -> Iterator[ChatEvent]:
    """The events of one prepared request: thinking and answer apart, tool calls parsed from the answer
    (at most ``max_calls``: ``parallel_tool_calls: false`` keeps the first)."""
    expect_thinking = thinking and not prompt.continues
    splitter = ThinkingStreamSplitter(expect_thinking=expect_thinking)
    calls_stream = ToolCallStream() if parse_tools else None
    streamed_calls: list[ToolCall] = []
    stream_logprobs = StreamedLogprobs(vocab, expect_thinking, loaded.eos_token_ids) if options.logprobs else None

    def answer_events(kind: str, text: str) -> Iterator[ChatEvent]:
        if kind == "thinking":
            yield ThinkingDelta(text)
        elif calls_stream is None:
            yield AnswerDelta(text)
        else:
            yield from tool_events(calls_stream.feed(text))

    def tool_events(pieces: list[tuple[str, Any]]) -> Iterator[ChatEvent]:
        for piece_kind, value in pieces:
            if piece_kind == "content":
                yield AnswerDelta(value)
            elif max_calls is None or len(streamed_calls) < max_calls:
                streamed_calls.append(value)
                yield ToolCallDelta(len(streamed_calls) - 1, value)

    for event in engine.stream(prompt.ids, options, cancel, client=client):
        if isinstance(event, Queued):
            yield QueuePosition(event.position, event.paused)
        elif isinstance(event, TextDelta):
            if stream_logprobs is not None:
                stream_logprobs.add(event.logprobs)
            for kind, text in splitter.feed(event.text):
                for reply_event in answer_events(kind, text):
                    if isinstance(reply_event, AnswerDelta) and stream_logprobs is not None:
                        reply_event = AnswerDelta(reply_event.text, stream_logprobs.take())
                    yield reply_event
        elif isinstance(event, Finished):
            result = event.result
            if calls_stream is not None:
                yield from tool_events(calls_stream.finish())
            # Thinking off: all answer. Cut short while thinking: the thinking stays thinking.
            split = splitter.finish(cut=result.finish_reason != "stop")
            answer, calls = split.answer, []
            if parse_tools:
                answer, parsed = parse_tool_calls(split.answer)
                # The streamed calls keep their ids; the whole-reply parse finds the same blocks.
                parsed = parsed[:max_calls] if max_calls is not None else parsed
                calls = streamed_calls if len(streamed_calls) == len(parsed) else parsed
            finish = result.finish_reason
            if calls and finish == "stop":
                finish = "tool_calls"
            logprobs = None
            if options.logprobs and vocab is not None:
                records = answer_records(result.logprobs, vocab, thinking=expect_thinking, eos_ids=loaded.eos_token_ids)
                logprobs = openai_logprobs(records, vocab)
            yield ChatDone(
                split.thinking,
                answer,
                result.text,
                finish,
                thinking,
                result.stats.to_dict(),
                prompt.dropped_messages,
                tuple(calls),
                logprobs,
            )
        elif isinstance(event, Failed):
            raise event.error


def batch_reply(
    engine: ChatEngine | StreamingBackend,
    conversations: Sequence[Sequence[dict[str, Any]]],
    *,
    enable_thinking: bool = False,
    cancel: threading.Event | None = None,
    **generation_kwargs: Any,
) -> list[dict[str, Any]]:
    """Replies to several independent conversations, generated together in one batch.

    Returns one dict per conversation: thinking, answer, full_response, finish_reason,
    prompt_tokens, completion_tokens. Raises like ``stream_reply`` when any conversation is invalid.
    A remote backend gets them as concurrent requests (the server batches them).
    """
    if not isinstance(engine, ChatEngine):
        return remote_batch(engine, conversations, enable_thinking, cancel, generation_kwargs)
    options = sampling_options(enable_thinking, **generation_kwargs)
    loaded = engine.load()
    prompts = [
        build_prompt(
            loaded.tokenizer,
            messages,
            enable_thinking=enable_thinking,
            max_context=loaded.max_context,
            max_new_tokens=options.max_new_tokens,
        )
        for messages in conversations
    ]
    results = engine.run_batch([p.ids for p in prompts], options, cancel)
    replies = []
    for prompt, result in zip(prompts, results, strict=True):
        split = split_thinking(result.text, expect_thinking=prompt.enable_thinking, cut=result.finish_reason != "stop")
        replies.append(
            {
                "thinking": split.thinking,
                "answer": split.answer,
                "full_response": result.text,
                "finish_reason": result.finish_reason,
                "prompt_tokens": len(prompt.ids),
                "completion_tokens": len(result.token_ids),
            }
        )
    return replies


def remote_batch(
    backend: StreamingBackend,
    conversations: Sequence[Sequence[dict[str, Any]]],
    enable_thinking: bool,
    cancel: threading.Event | None,
    generation_kwargs: dict[str, Any],
) -> list[dict[str, Any]]:
    """``batch_reply`` over a remote backend: one request per conversation, all at once."""
    for messages in conversations:  # every conversation is checked before anything is sent
        normalize_messages(messages)

    def one(messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
        events = stream_reply(backend, messages, enable_thinking=enable_thinking, cancel=cancel, **generation_kwargs)
        done = next(e for e in events if isinstance(e, ChatDone))
        return {
            "thinking": done.thinking,
            "answer": done.answer,
            "full_response": done.full_response,
            "finish_reason": done.finish_reason,
            "prompt_tokens": done.stats["prompt_tokens"],
            "completion_tokens": done.stats["new_tokens"],
        }

    with ThreadPoolExecutor(max_workers=max(1, min(len(conversations), backend.max_batch))) as pool:
        return list(pool.map(one, conversations))


@dataclass
class Turn:
    role: str  # "user", "assistant" or "tool" (a tool's result)
    content: str
    thinking: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    # Every way this turn was written (an edited question, a regenerated answer), oldest first, with
    # what followed each; ``version`` is the one shown, the only one re-sent (see serve/ui_versions.py).
    versions: list[dict[str, Any]] = field(default_factory=list)
    version: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # an assistant's calls, OpenAI's shape
    tool_call_id: str = ""  # a tool result: the call it answers

    def message(self) -> dict[str, Any]:
        """The turn as a chat message to re-send (answer only; tool calls and results as OpenAI writes them)."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.role == "tool" and self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


@dataclass
class Conversation:
    """One chat's history; thread-compatible, not thread-safe (one user drives it)."""

    system_prompt: str = ""
    turns: list[Turn] = field(default_factory=list)

    def messages_with(self, message: str) -> list[dict[str, str]]:
        """The messages to send for a new user ``message`` (answers only for earlier replies)."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages += [t.message() for t in self.turns]
        messages.append({"role": "user", "content": message})
        return messages

    def add_exchange(self, message: str, done: ChatDone) -> None:
        self.turns.append(Turn("user", message))
        self.turns.append(Turn("assistant", done.answer, done.thinking, done.stats))

    def clear(self) -> None:
        self.turns.clear()

    def to_list(self) -> list[dict[str, Any]]:
        return [t.message() | ({"thinking": t.thinking} if t.role == "assistant" else {}) for t in self.turns]

    @classmethod
    def from_list(cls, items: Sequence[dict[str, Any]], system_prompt: str = "") -> Conversation:
        """Rebuild from ``to_list()`` output (e.g. an imported JSON file); assistant text is split at </think>."""
        turns = []
        for i, item in enumerate(items):
            role, content = item.get("role"), item.get("content")
            calls = item.get("tool_calls") if role == "assistant" else None
            if content is None and calls:
                content = ""  # a reply that only calls tools
            if role not in ("user", "assistant", "tool") or not isinstance(content, str):
                raise ChatbotError(f"Item {i} needs a role of user, assistant or tool and a text content.")
            if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
                raise ChatbotError(f"Item {i} has tool_calls that are not a list of calls.")
            thinking = item.get("thinking") or ""
            if role == "assistant" and "</think>" in content:
                split = split_thinking(content)
                content, thinking = split.answer, thinking or split.thinking
            turn = Turn(role, content, thinking if isinstance(thinking, str) else "", tool_calls=calls or [])
            turn.tool_call_id = str(item.get("tool_call_id") or "") if role == "tool" else ""
            turns.append(turn)
        return cls(system_prompt, turns)
