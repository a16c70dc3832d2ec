"""The OpenAI-compatible API's request and response bodies, as pydantic models.

They give the API its validation (types and ranges, answered with a 400 and an OpenAI error body)
and its OpenAPI schema at ``/docs``. Sampling ranges are copied from ``SamplingOptions`` so that the
API, the UI and ``Qwen3ChatBot`` accept exactly the same values. Used by ``chatbot.serve.api``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..chat.request import ChatRequest
from ..engine.limits import ReplyLimits
from ..engine.sampling import (
    MAX_STOP_STRINGS,
    MAX_TOP_LOGPROBS,
    NON_THINKING_DEFAULTS,
    THINKING_DEFAULTS,
    SamplingOptions,
)

BOUND_NAMES = ("gt", "ge", "lt", "le", "max_length")
MAX_CHOICES = 8  # the most choices (n) one chat completion may ask for


def sampling_field(option: str, description: str | None = None, **overrides: Any) -> Any:
    """An optional request field with the range of ``SamplingOptions.<option>`` (or ``overrides``)."""
    info = SamplingOptions.model_fields[option]
    bounds = {
        name: getattr(constraint, name)
        for constraint in info.metadata
        for name in BOUND_NAMES
        if hasattr(constraint, name)
    }
    bounds.update(overrides)
    text = description or info.description or ""
    if option in THINKING_DEFAULTS:
        text += f" Default: {THINKING_DEFAULTS[option]} with thinking, {NON_THINKING_DEFAULTS[option]} without."
    elif info.default is not None:
        text += f" Default: {info.default}."
    return Field(None, description=text, **bounds)


# --- requests -------------------------------------------------------------------------------------------------


class TextPart(BaseModel):
    """One part of a message given as a list of parts; only text parts are understood."""

    type: Literal["text"] = Field(description="Only 'text': this model reads no images or audio.")
    text: str


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: str = Field("{}", description="The arguments as a JSON text.")


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant message."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message of the conversation; the full history comes with every request."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(
        description="system or developer (the same; anywhere), user, assistant, or tool (a tool's result). "
        "A conversation ending with an assistant message asks to continue that message."
    )
    content: str | list[TextPart] | None = Field(
        None,
        description="The text, or a list of text parts that are joined; null only for an assistant message "
        "with tool_calls. Thinking in assistant messages (<think>...</think>) is dropped: earlier answers "
        "are re-sent answer-only.",
    )
    tool_calls: list[ToolCallIn] | None = Field(None, description="The calls an earlier assistant message made.")
    reasoning_content: str | None = Field(
        None,
        description="The thinking of a last assistant message that is continued (with an empty content, the reply "
        "goes on thinking from it); ignored on earlier messages.",
    )
    tool_call_id: str | None = Field(None, description="For a tool message: the call it answers.")
    name: str | None = Field(None, description="Accepted and ignored.")

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs a content")
        return self

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        # One clear message instead of one error per branch of the str | list union.
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("content must be a string or a list of text parts")
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(
                    'content parts must look like {"type": "text", "text": "..."}; this model reads text only'
                )
        return value

    def text(self) -> str | None:
        if self.content is None or isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def plain(self) -> dict[str, Any]:
        """The message as ``ChatRequest.build`` takes it."""
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.role == "assistant" and self.reasoning_content is not None:
            message["reasoning_content"] = self.reasoning_content
        return message


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="The function's name.")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema of the arguments object.")
    strict: bool | None = Field(None, description="Accepted; required and named calls are always enforced.")


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(description="The schema's name.")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="The JSON Schema.")
    strict: bool | None = Field(None, description="Accepted; the schema is always enforced.")


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError('json_schema needs {"json_schema": {"name": ..., "schema": {...}}}')
        return self

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type}
        if self.json_schema is not None:
            body["json_schema"] = {"name": self.json_schema.name, "schema": self.json_schema.schema_}
        return body


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(False, description="Send a last chunk with the token usage and no choices.")


class ChatTemplateKwargs(BaseModel):
    """vLLM and SGLang's way to pass switches to the chat template."""

    model_config = ConfigDict(extra="ignore")

    enable_thinking: bool | None = Field(None, description="Think before answering (default true).")


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. Unknown fields that clients commonly send (user, store, metadata,
    ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Accepted for compatibility; the one loaded model answers.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation, oldest first.")
    stream: bool | None = Field(
        False, description="Stream the reply as Server-Sent Events (data: {...}, data: [DONE]); null = false."
    )
    stream_options: StreamOptions | None = Field(None, description="Streaming options (include_usage).")
    enable_thinking: bool | None = Field(
        None,
        description="Think before answering; wins over chat_template_kwargs.enable_thinking. Default true, "
        "as in the web chat, vLLM and Qwen3's chat template. "
        "/think or /no_think in the last user message overrides both, as in Qwen3.",
    )
    chat_template_kwargs: ChatTemplateKwargs | None = Field(
        None, description='{"enable_thinking": false} turns thinking off (vLLM/SGLang convention).'
    )
    temperature: float | None = sampling_field("temperature")
    top_p: float | None = sampling_field("top_p")
    top_k: int | None = sampling_field("top_k", "Keep the k most likely tokens (0 or -1 = all).", ge=-1)
    min_p: float | None = sampling_field("min_p")
    max_completion_tokens: int | None = sampling_field(
        "max_new_tokens", "Most tokens to generate, thinking included; wins over max_tokens."
    )
    max_tokens: int | None = sampling_field("max_new_tokens", "Older name of max_completion_tokens.")
    min_tokens: int | None = sampling_field("min_new_tokens")
    repetition_penalty: float | None = sampling_field("repetition_penalty")
    presence_penalty: float | None = sampling_field("presence_penalty")
    frequency_penalty: float | None = sampling_field("frequency_penalty")
    seed: int | None = sampling_field("seed")
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = Field(
        None, description=f"A string or up to {MAX_STOP_STRINGS} strings that end the reply (left out of it)."
    )
    n: int | None = Field(
        1,
        ge=1,
        le=MAX_CHOICES,
        description=f"Number of choices, 1 to {MAX_CHOICES} (null = 1): the prompt is read once and each choice "
        "samples on its own, with seed + index when a seed is given; each choice takes a place in the queue.",
    )
    logprobs: bool | None = Field(None, description="Return the log-probability of each answer token.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="With logprobs: this many most likely tokens per position."
    )
    logit_bias: dict[str, float] | None = Field(
        None, description="Token id (as a string) -> bias from -100 to 100 added to its logit."
    )
    response_format: ResponseFormat | None = Field(
        None, description="json_object or json_schema: the answer is constrained to match (thinking stays free)."
    )
    tools: list[Tool] | None = Field(None, description="Functions the model may call (Qwen3's tool format).")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="auto (default with tools), none, required, or a named function."
    )
    parallel_tool_calls: bool | None = Field(None, description="With required: allow several calls (default true).")
    continue_final_message: bool | None = Field(
        None,
        description="vLLM's field: true continues the last message, which must be the assistant's (a reply cut at "
        "max_tokens, say); the reply holds only what comes next. A conversation ending with an assistant message "
        "is continued either way.",
    )
    add_generation_prompt: bool | None = Field(
        None, description="vLLM's field, accepted; it cannot be true together with continue_final_message."
    )

    @field_validator("add_generation_prompt")
    @classmethod
    def _continue_or_new_turn(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value and info.data.get("continue_final_message"):
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_strings(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError("stop must be a string or a list of strings")
        if len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"stop has {len(value)} strings; at most {MAX_STOP_STRINGS} are allowed")
        return value

    @field_validator("n", mode="before")
    @classmethod
    def _choices_bound(cls, value: Any) -> Any:
        # A clearer message than the generic range error: the limit is this server's, not the client's.
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_CHOICES:
            raise ValueError(
                f"n={value} is over this server's limit of {MAX_CHOICES} choices per request; "
                f"send n={MAX_CHOICES} or less, or several requests"
            )
        return value

    def thinking(self) -> bool:
        """The thinking switch: top-level ``enable_thinking``, else ``chat_template_kwargs``, else on (as the
        web chat, vLLM and Qwen3's chat template default)."""
        if self.enable_thinking is not None:
            return self.enable_thinking
        if self.chat_template_kwargs is not None and self.chat_template_kwargs.enable_thinking is not None:
            return self.chat_template_kwargs.enable_thinking
        return True

    def chat_request(self, client: str, limits: ReplyLimits) -> ChatRequest:
        """The request as the backends take it: validated, under the server's ``limits``, with the API's
        rules (``strict_context``: nothing dropped; no max_tokens means the room left, at most the cap).

        Raises:
            InvalidRequestError: what pydantic cannot check here (messages, tools with response_format,
                max_tokens over the cap...).
        """
        tool_choice = self.tool_choice
        return ChatRequest.build(
            [message.plain() for message in self.messages],
            enable_thinking=self.thinking(),
            tools=[tool.model_dump(exclude_none=True) for tool in self.tools] if self.tools else None,
            tool_choice=tool_choice.model_dump() if isinstance(tool_choice, NamedToolChoice) else tool_choice,
            parallel_tool_calls=self.parallel_tool_calls is not False,
            response_format=self.response_format.as_dict() if self.response_format else None,
            strict_context=True,
            client=client,
            limits=limits,
            continue_final_message=self.continue_final_message,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            logit_bias=self.logit_bias,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=0 if self.top_k == -1 else self.top_k,
            min_p=self.min_p,
            max_new_tokens=self.max_completion_tokens or self.max_tokens,
            min_new_tokens=self.min_tokens,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
            stop=self.stop,
        )


# --- responses ------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and what to do.")
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error or server_error.")
    param: str | None = Field(None, description="The request field at fault, e.g. messages[1].role.")
    code: str | None = Field(None, description="e.g. context_length_exceeded, invalid_api_key, queue_full.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens of the prompt the model read (after any history trimming).")
    completion_tokens: int = Field(description="Tokens generated, thinking and the end-of-turn token included.")
    total_tokens: int


class FunctionCallOut(BaseModel):
    name: str
    arguments: str = Field(description="The arguments as a JSON text.")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(description="The answer; null when the reply is only tool calls.")
    refusal: None = Field(None, description="Always null: this model's refusals are ordinary answers.")
    reasoning_content: str | None = Field(None, description="The thinking; null when thinking is off.")
    tool_calls: list[ToolCallOut] | None = Field(None, description="The tool calls parsed from the answer.")


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"] = Field(
        description="stop: end of turn or a stop string; length: limit; tool_calls: the answer calls tools."
    )
    logprobs: ChoiceLogprobs | None = Field(None, description="With logprobs: the answer's tokens.")
    stop_reason: str | None = Field(None, description="vLLM's field: the stop string that ended the reply, if one did.")


class ChatCompletion(BaseModel):
    """The reply when stream is false. With stream true, chunks of object chat.completion.chunk follow the
    same shape with choices[0].delta (role, reasoning_content, content) instead of message."""

    id: str = Field(description="chatcmpl-...")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(description="Unix time of the request.")
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qwen3-chat"
    max_model_len: int | None = Field(None, description="The context window in tokens, as vLLM reports it.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    """With ``--api-key``, a request without the key gets ``status`` only; everything else needs the key."""

    status: Literal["ready", "loading", "failed"]
    model: str | None = None
    precision: dict[str, Any] | None = Field(
        None, description="The precision decision (mode, label, reason, device, attempts...); null until loaded."
    )
    memory: dict[str, int | None] | None = Field(
        None,
        description="weights_bytes, process_rss_bytes, cuda_allocated_bytes and cuda_reserved_bytes (null on CPU).",
    )
    queue: dict[str, int | bool] | None = Field(
        None,
        description="running, waiting (depth is the same), paused, size (queue limit), max_batch and busy "
        "(anything running).",
    )
    load: dict[str, str | float] | None = Field(None, description="stage and fraction of the model load.")
    error: str | None = Field(
        None, description="Why loading failed (status failed), or why the backend is unreachable."
    )
    backend: dict[str, Any] | None = Field(
        None,
        description="With --backend: url, model, models, max_model_len (when reported), reachable, error, checked_at, "
        "retry_in, round_trip_seconds, precision (only as stated with --backend-precision).",
    )
