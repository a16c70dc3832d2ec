"""One streamed reply from a remote OpenAI-compatible server, as this project's chat events.

``request_body`` turns a conversation and validated ``SamplingOptions`` into the arguments of
``openai``'s ``chat.completions.create``; ``RemoteReply`` turns the chunks that come back into
``ThinkingDelta`` / ``AnswerDelta`` / ``ToolCallDelta`` events and a closing ``ChatDone``;
``backend_error`` turns the ``openai`` package's exceptions into errors a user can act on.

Thinking comes in one of two shapes. Servers with a reasoning parser (vLLM and SGLang with
``--reasoning-parser qwen3``, llama.cpp's server, this app) send it in ``reasoning_content`` (vLLM's
newer name: ``reasoning``); others send Qwen3's raw ``<think>...</think>`` inside ``content``, which
the same streamed splitter as for the local model takes apart, with the same edge cases. One more
edge case is the server's: with thinking off, a reply that opens with ``<think>`` (llama-server
echoes the template's empty ``<think></think>``; a server that ignores the switch thinks anyway) is
split too, so the answer never starts with the tags; any later ``</think>`` stays answer text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import openai

from ..engine.sampling import SamplingOptions
from ..errors import (
    BackendError,
    BackendUnavailableError,
    ChatbotError,
    ContextLengthError,
    InvalidRequestError,
    QueueFullError,
)
from .events import AnswerDelta, ChatDone, ChatEvent, ThinkingDelta, ToolCallDelta
from .thinking import THINK_CLOSE, THINK_OPEN, ThinkingStreamSplitter, TrimmedChannel
from .tools import ToolCall

REMOTE_FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter"}


def remote_messages(clean: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Normalized messages (``prompt.normalize_messages``) in OpenAI's wire form."""
    out = []
    for message in clean:
        item = dict(message)
        if item.get("tool_calls"):
            item["tool_calls"] = [
                {
                    **call,
                    "function": {
                        "name": call["function"]["name"],
                        "arguments": call["function"]["arguments"]
                        if isinstance(call["function"]["arguments"], str)
                        else json.dumps(call["function"]["arguments"], ensure_ascii=False),
                    },
                }
                for call in item["tool_calls"]
            ]
            item["content"] = item["content"] or None
        out.append(item)
    return out


def request_body(
    model: str,
    messages: list[dict[str, Any]],
    options: SamplingOptions,
    *,
    thinking: bool,
    send_max_tokens: bool,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: Any = None,
    parallel_tool_calls: bool = True,
    response_format: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``chat.completions.create(stream=True)``.

    OpenAI's own fields go as fields; the rest (``top_k``, ``min_p``, ``repetition_penalty``,
    ``min_tokens``, the template switch) in ``extra_body``, under vLLM's names, which SGLang,
    llama.cpp's server and this app read too (a server that does not know one ignores it).
    """
    continues = messages[-1]["role"] == "assistant"
    extra: dict[str, Any] = {
        "chat_template_kwargs": {"enable_thinking": thinking},
        "top_k": options.top_k or -1,  # -1: no top-k limit in vLLM's words (0 is ours)
        "min_p": options.min_p,
        "repetition_penalty": options.repetition_penalty,
    }
    if options.min_new_tokens:
        extra["min_tokens"] = options.min_new_tokens
    if continues:  # write on from the last assistant message instead of starting a new one
        extra.update(add_generation_prompt=False, continue_final_message=True)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": options.temperature,
        "top_p": options.top_p,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
        "extra_body": extra,
    }
    if send_max_tokens:
        body["max_tokens"] = options.max_new_tokens
    if options.seed is not None:
        body["seed"] = options.seed
    if options.stop:
        body["stop"] = list(options.stop)
    if options.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in options.logit_bias}
    if options.logprobs:
        body["logprobs"] = True
        if options.top_logprobs:
            body["top_logprobs"] = options.top_logprobs
    if tools:
        body["tools"] = tools
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        body["parallel_tool_calls"] = parallel_tool_calls
    if response_format is not None:
        body["response_format"] = response_format
    return body


class RemoteReply:
    """Chunks in, chat events out; one per request. ``finish`` gives the closing ``ChatDone``."""

    def __init__(self, thinking: bool, continues: str = "", submitted: float | None = None) -> None:
        """``continues``: "thinking" or "answer" when the reply writes on from a message cut there
        (``prompt.continued_part``), "" for a new reply. A continuation keeps its leading spaces, which
        join it to the text already written, as a local model's does."""
        self.thinking = thinking
        self.continues = continues
        self.submitted = submitted if submitted is not None else time.perf_counter()
        self.started: float | None = None  # when the first text came
        # With thinking on, or writing on from a cut message, the splitter is known at once; with thinking
        # off, the reply's opening decides.
        self.splitter: ThinkingStreamSplitter | None = None
        if continues:
            self.splitter = ThinkingStreamSplitter(False, continues=continues)
        elif thinking:
            self.splitter = ThinkingStreamSplitter(True)
        self._opening = ""  # content held until it shows whether the reply opens with <think>
        self.reasoning_channel = TrimmedChannel()
        self.answer_channel = TrimmedChannel()
        # The part written on from starts at once: its leading spaces are text, not the reply's opening.
        self.reasoning_channel.started = continues == "thinking"
        self.answer_channel.started = continues == "answer"
        self.reasoning = ""  # from reasoning_content / reasoning
        self.content = ""
        self.pieces = 0  # text-bearing chunks: the token count when the server sends no usage
        self.finish_reason: str | None = None
        self.usage: dict[str, int] = {}
        self.calls: dict[int, dict[str, str]] = {}
        self.logprobs: list[dict[str, Any]] = []
        self.stop_sequence: str | None = None  # vLLM's stop_reason: the stop string that ended the reply
        self.queue_seconds = 0.0
        self.dropped_messages = 0  # oldest messages left out to fit the server's context
        self.time_limited = False  # cut by this server's --max-generation-seconds

    def feed(self, chunk: Any) -> list[ChatEvent]:
        """The events of one ``ChatCompletionChunk``."""
        events: list[ChatEvent] = []
        if getattr(chunk, "usage", None) is not None:
            self.usage = {
                "prompt_tokens": int(chunk.usage.prompt_tokens or 0),
                "completion_tokens": int(chunk.usage.completion_tokens or 0),
            }
        for choice in chunk.choices or []:
            if choice.index != 0:
                continue
            delta = choice.delta
            reasoning = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
            if isinstance(reasoning, str) and reasoning:
                self._text_arrived()
                self.reasoning += reasoning
                if piece := self.reasoning_channel.push(reasoning):
                    events.append(ThinkingDelta(piece))
            if delta.content:
                self._text_arrived()
                self.content += delta.content
                if self.reasoning:  # the server splits: content is all answer
                    if piece := self.answer_channel.push(delta.content):
                        events.append(AnswerDelta(piece))
                else:
                    events.extend(
                        ThinkingDelta(text) if kind == "thinking" else AnswerDelta(text)
                        for kind, text in self._split(delta.content)
                    )
            for call in delta.tool_calls or []:
                self._text_arrived()
                slot = self.calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] = call.id or slot["id"]
                if call.function is not None:
                    slot["name"] += call.function.name or ""
                    slot["arguments"] += call.function.arguments or ""
            if choice.logprobs is not None and choice.logprobs.content:
                self.logprobs.extend(item.model_dump() for item in choice.logprobs.content)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
                # vLLM (and this server) name the stop string in stop_reason; a token id or None is no string.
                stop_reason = getattr(choice, "stop_reason", None)
                self.stop_sequence = stop_reason if isinstance(stop_reason, str) and stop_reason else None
        return events

    def _split(self, text: str) -> list[tuple[str, str]]:
        if self.splitter is None:
            self._opening += text
            head = self._opening.lstrip()
            if not head or (THINK_OPEN.startswith(head) and len(head) < len(THINK_OPEN)):
                return []  # could still become "<think>"
            self.splitter = ThinkingStreamSplitter(expect_thinking=head.startswith(THINK_OPEN))
            text, self._opening = self._opening, ""
        return self.splitter.feed(text)

    def _text_arrived(self) -> None:
        self.pieces += 1
        if self.started is None:
            self.started = time.perf_counter()

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(slot["id"] or f"call_{index}", slot["name"], slot["arguments"] or "{}")
            for index, slot in sorted(self.calls.items())
        )

    def finish(self, cancelled: bool = False, time_limited: bool = False) -> list[ChatEvent]:
        """The tool calls and the ``ChatDone`` of a stream that ended (or was ``cancelled`` by us, or cut by
        this server's time limit: finish reason "length", as for a local model).

        Raises:
            BackendError: the server closed the stream without saying why the reply ended.
        """
        held: list[ChatEvent] = []
        self.time_limited = time_limited
        if cancelled:
            reason = "cancelled"
        elif time_limited:
            reason = "length"
        elif self.finish_reason is None:
            raise BackendError(
                "The model server closed the stream before the reply ended (no finish_reason).",
                fix="Check the model server's log; it may have stopped or restarted.",
            )
        else:
            reason = self.finish_reason if self.finish_reason in REMOTE_FINISH_REASONS else "stop"
        if self.reasoning and self.continues == "thinking":  # written on from thinking cut mid-way
            thinking, answer = self.reasoning.rstrip(), self.content.strip()
            full = f"{self.reasoning}{THINK_CLOSE}\n\n{self.content}" if self.content else self.reasoning
        elif self.reasoning:
            thinking = self.reasoning.strip()
            answer = self.content.rstrip() if self.continues == "answer" else self.content.strip()
            full = f"{THINK_OPEN}\n{thinking}\n{THINK_CLOSE}\n\n{self.content}" if thinking else self.content
        else:
            if self.splitter is None:  # the whole reply was blank or a piece of "<think>": answer text
                self.splitter = ThinkingStreamSplitter(False)
                held = [AnswerDelta(text) for _, text in self.splitter.feed(self._opening)]
            split = self.splitter.finish(cut=reason not in ("stop", "tool_calls"))
            thinking, answer, full = split.thinking, split.answer, self.content
        calls = self.tool_calls()
        events: list[ChatEvent] = [*held, *(ToolCallDelta(index, call) for index, call in enumerate(calls))]
        events.append(
            ChatDone(
                thinking,
                answer,
                full,
                reason,
                self.thinking,
                self.stats(),
                dropped_messages=self.dropped_messages,
                tool_calls=calls,
                logprobs={"content": self.logprobs} if self.logprobs else None,
                stop_sequence=self.stop_sequence if reason == "stop" else None,
            )
        )
        return events

    def stats(self) -> dict[str, Any]:
        now = time.perf_counter()
        new_tokens = self.usage.get("completion_tokens") or self.pieces
        first = (self.started - self.submitted) if self.started is not None else 0.0
        decode = (now - self.started) if self.started is not None else 0.0
        return {
            "prompt_tokens": self.usage.get("prompt_tokens", 0),
            "cached_prompt_tokens": 0,
            "new_tokens": new_tokens,
            "queue_seconds": round(self.queue_seconds, 4),
            "time_to_first_token": round(first, 4),
            "prefill_seconds": 0.0,
            "decode_seconds": round(decode, 4),
            "tokens_per_second": round((new_tokens - 1) / decode, 4) if new_tokens > 1 and decode > 0 else 0.0,
            "total_seconds": round(now - self.submitted, 4),
            "time_limited": self.time_limited,
        }


def _remote_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        message = inner.get("message") if isinstance(inner, dict) else None
        if isinstance(message, str) and message:
            return message
    return exc.message


def backend_error(exc: BaseException, url: str) -> ChatbotError:
    """What an ``openai`` exception from the server at ``url`` means for the user, as one of our errors."""
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError included
        cause = exc.__cause__ or exc
        reason = str(cause).strip() or type(cause).__name__
        return BackendUnavailableError(
            f"The model server at {url} cannot be reached ({reason}).",
            fix="Start it or check --backend (its /v1 URL); this app keeps retrying on its own.",
        )
    if isinstance(exc, openai.APIStatusError):
        status, message = exc.status_code, _remote_message(exc)
        said = f"The model server at {url} answered {status}: {message}"
        if status in (400, 413, 422):
            code = exc.code if isinstance(exc.code, str) else ""
            kind = exc.type if isinstance(exc.type, str) else ""
            # vLLM and this app: "maximum context length"; llama-server: "exceeds the available context size"
            too_long = any(words in message.lower() for words in ("context length", "context size", "context window"))
            if code == "context_length_exceeded" or kind == "exceed_context_size_error" or too_long:
                return ContextLengthError(message, param="messages")
            param = exc.param if isinstance(exc.param, str) else None
            return InvalidRequestError(message, param=param)
        if status == 429:
            retry = exc.response.headers.get("retry-after", "")
            seconds = int(retry) if retry.isdigit() else 5
            return QueueFullError(f"The model server is busy: {message}", retry_after=seconds)
        if status in (401, 403):
            return BackendError(said, fix="Give this app the server's key with --backend-api-key (or its -file).")
        if status == 404:
            return BackendError(said, fix="Check --backend (its /v1 URL) and --backend-model (see GET /v1/models).")
        if status in (502, 503, 504):
            return BackendUnavailableError(said, fix="Wait for the model server to be ready; this app keeps retrying.")
        return BackendError(said, fix="See the model server's log.")
    if isinstance(exc, openai.APIError):  # an error event inside the stream
        return BackendError(f"The model server at {url} failed mid-reply: {exc.message}", fix="See its log.")
    return BackendError(f"Talking to the model server at {url} failed: {exc}", fix="See this app's log.")
