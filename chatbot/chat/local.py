"""``LocalBackend``: the model loaded in this process (``engine.ChatEngine``) as a ``chat.backend.Backend``.

``stream(request, cancel)`` waits for the model (yielding ``Loading`` progress), builds the prompt from
the chat template (trimming the oldest whole turns unless the request is strict), hands the token ids
to the engine and turns what comes back into chat events: ``ThinkingDelta`` / ``AnswerDelta`` split at
``</think>`` as it streams, ``ToolCallDelta`` parsed from the answer, then ``ChatDone``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..engine.constraints import Vocabulary, vocabulary
from ..engine.engine import ChatEngine, Failed, Finished, Queued, TextDelta
from ..engine.jobs import LOCAL_CLIENT
from ..engine.limits import ReplyLimits
from ..engine.shared_prefill import SharedPrefill
from ..errors import DeviceFaultError, InvalidRequestError
from ..model.loader import LoadedModel
from .backend import BackendStatus
from .events import AnswerDelta, ChatDone, ChatEvent, Loading, QueuePosition, ThinkingDelta, ToolCallDelta
from .logprobs import StreamedLogprobs, answer_records, openai_logprobs
from .prompt import Prompt, build_prompt
from .request import ChatRequest
from .thinking import ThinkingStreamSplitter, split_thinking
from .tools import ToolCall, ToolCallStream, parse_tool_calls

LOADING_POLL_SECONDS = 0.25


class LocalBackend:
    """See the module docstring. Thread-safe: the engine is; several backends may share one engine."""

    def __init__(self, engine: ChatEngine) -> None:
        self.engine = engine

    @property
    def limits(self) -> ReplyLimits:
        return self.engine.limits

    @property
    def queue_size(self) -> int:
        return self.engine.queue_size

    @property
    def max_batch(self) -> int:
        return self.engine.max_batch

    @property
    def loaded(self) -> LoadedModel | None:
        return self.engine.loaded

    @property
    def model_name(self) -> str | None:
        return None  # the app names a local model (--served-model-name, the hub id or the folder)

    def context_window(self) -> int | None:
        loaded = self.engine.loaded
        return loaded.max_context if loaded is not None else None

    def start_loading(self) -> None:
        self.engine.start_loading()

    def load(self) -> LoadedModel:
        return self.engine.load()

    def describe(self) -> str:
        """One line: the precision decision (loads the model)."""
        return self.engine.load().precision.summary()

    def status(self) -> BackendStatus:
        engine = self.engine
        loaded = engine.loaded
        stage, fraction = engine.progress.snapshot()
        error = engine.load_error
        state = engine.status
        return BackendStatus(
            state=state,
            stage=stage,
            fraction=round(fraction, 3),
            error=str(error).replace("\nFix: ", " Fix: ") if error is not None else None,
            device_fault=isinstance(error, DeviceFaultError),
            settled=state in ("ready", "failed"),
            context_window=loaded.max_context if loaded else None,
            queue={**engine.occupancy(), "size": engine.queue_size, "busy": engine.busy},
            precision=loaded.precision if loaded else None,
            weights_bytes=loaded.weights_bytes if loaded else None,
            device=loaded.device if loaded else None,
            generated=loaded is not None and loaded.generated is not None,
        )

    def close(self) -> None:
        self.engine.close()

    # --- replies ------------------------------------------------------------------------------------------

    def stream(self, request: ChatRequest, cancel: threading.Event | None = None) -> Iterator[ChatEvent]:
        """Stream the reply to ``request``; set ``cancel`` to stop it (it then ends with "cancelled").

        Raises:
            InvalidRequestError, ContextLengthError: the request does not fit the model; nothing was generated.
            QueueFullError: too many requests waiting.
            GenerationError: generation failed part-way; the load error when the model cannot load.
        """
        yield from wait_for_model(self.engine)
        loaded = self.engine.load()
        options = request.options
        check_logit_bias(options.logit_bias, vocab_size(loaded))
        vocab = model_vocabulary(loaded) if (options.constraint is not None or options.logprobs) else None
        prompt = build_prompt(
            loaded.tokenizer,
            list(request.messages),
            enable_thinking=request.thinking,
            max_context=loaded.max_context,
            max_new_tokens=None if request.fill_context else options.max_new_tokens,
            tools=list(request.tools) if request.tools else None,
            trim=not request.strict_context,
        )
        if request.fill_context:  # the room left, within the cap
            options = options.model_copy(
                update={"max_new_tokens": min(loaded.max_context - len(prompt.ids), options.max_new_tokens)}
            )
        if options.constraint is not None:
            assert vocab is not None
            # Compiled here, before the engine admits the request (bounded; a refused schema is a 400), and
            # carried in the options: the engine's worker never waits for a compilation.
            compiled = vocab.compile(options.constraint, cancel)
            if compiled is None:  # the client went away while it compiled
                yield ChatDone("", "", "", "cancelled", request.thinking, {})
                return
            options = options.model_copy(update={"compiled_grammar": compiled})
        yield from run_reply(
            self.engine,
            loaded,
            prompt,
            options,
            cancel,
            request.thinking,
            request.tools is not None,
            vocab,
            request.max_calls,
            request.client,
            request.shared_prefill,
        )

    def batch(self, requests: Sequence[ChatRequest], cancel: threading.Event | None = None) -> list[ChatDone]:
        """Replies to independent requests, generated together in the continuous batch (no tools, plain
        thinking split); each request's options apply to all (they are built alike)."""
        if not requests:
            return []
        loaded = self.engine.load()
        prompts = [
            build_prompt(
                loaded.tokenizer,
                list(request.messages),
                enable_thinking=request.thinking,
                max_context=loaded.max_context,
                max_new_tokens=request.options.max_new_tokens,
            )
            for request in requests
        ]
        results = self.engine.run_batch([p.ids for p in prompts], requests[0].options, cancel, requests[0].client)
        replies = []
        for prompt, result in zip(prompts, results, strict=True):
            cut = result.finish_reason != "stop"
            split = split_thinking(result.text, expect_thinking=prompt.enable_thinking, cut=cut)
            stats = result.stats.to_dict() | {"prompt_tokens": len(prompt.ids), "new_tokens": len(result.token_ids)}
            replies.append(
                ChatDone(
                    split.thinking,
                    split.answer,
                    result.text,
                    result.finish_reason,
                    prompt.enable_thinking,
                    stats,
                    stop_sequence=result.stop_sequence,
                )
            )
        return replies


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


def vocab_size(loaded: LoadedModel) -> int:
    config: Any = loaded.model.config
    return int(config.vocab_size)


def model_vocabulary(loaded: LoadedModel) -> Vocabulary:
    return vocabulary(loaded.tokenizer, vocab_size(loaded), tuple(loaded.eos_token_ids))


def check_logit_bias(pairs: Sequence[tuple[int, float]], vocab_size: int) -> None:
    """Raises InvalidRequestError for a ``logit_bias`` token id outside the vocabulary."""
    for token, _ in pairs:
        if not 0 <= token < vocab_size:
            raise InvalidRequestError(
                f"logit_bias has the key {str(token)!r}, which is not a token id of this model (0 to {vocab_size - 1})",
                param="logit_bias",
            )


def run_reply(
    engine: Any,
    loaded: LoadedModel | None,
    prompt: Prompt,
    options: Any,
    cancel: threading.Event | None,
    thinking: bool,
    parse_tools: bool,
    vocab: Vocabulary | None,
    max_calls: int | None = None,
    client: str = LOCAL_CLIENT,
    shared: SharedPrefill | None = None,
) -> Iterator[ChatEvent]:
    """The events of one prepared request: thinking and answer apart, tool calls parsed from the answer
    (at most ``max_calls``: ``parallel_tool_calls: false`` keeps the first). ``engine`` is anything with
    the ``ChatEngine.stream`` method; ``shared``: the prompt read once for a request's choices."""
    expect_thinking = thinking and not prompt.continues
    # A continued reply starts inside the part it was cut in (its thinking or its answer).
    splitter = ThinkingStreamSplitter(expect_thinking=expect_thinking, continues=prompt.continued_part)
    calls_stream = ToolCallStream() if parse_tools else None
    streamed_calls: list[ToolCall] = []
    eos_ids = loaded.eos_token_ids if loaded is not None else ()
    thinking_first = expect_thinking or prompt.continues_thinking  # tokens before </think> are no answer
    stream_logprobs = StreamedLogprobs(vocab, thinking_first, eos_ids) if options.logprobs else None

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

    sharing = {"shared": shared} if shared is not None else {}
    for event in engine.stream(prompt.ids, options, cancel, client=client, **sharing):
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
                records = answer_records(result.logprobs, vocab, thinking=thinking_first, eos_ids=eos_ids)
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
                result.stop_sequence,
            )
        elif isinstance(event, Failed):
            raise event.error
