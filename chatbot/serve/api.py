"""The OpenAI-compatible API: ``POST /v1/chat/completions``, ``GET /v1/models`` and ``GET /health``.

Tools (Qwen3's own format, as vLLM serves it), structured output (``response_format``, enforced by
constrained decoding), ``logprobs`` / ``top_logprobs`` and ``logit_bias`` follow OpenAI's spec;
``HEAD`` answers wherever ``GET`` does. ``/v1/completions`` (legacy text completion) is not
served: a 404 says to use ``/v1/chat/completions``.

A thin layer over the chat engine the web UI uses: every request goes through ``stream_reply``
and waits in the same first-come, first-served queue. ``python app.py`` serves it on
``--api-port`` (8000; 0 turns it off) beside the web UI; ``--api-key`` makes it require
``Authorization: Bearer KEY``. The schema of every field is at ``/docs``.

    curl http://127.0.0.1:8000/v1/chat/completions -H "Content-Type: application/json" \\
      -d '{"model": "qwen3", "messages": [{"role": "user", "content": "Hello"}]}'

Thinking is off by default; ``"chat_template_kwargs": {"enable_thinking": true}`` (or a top-level
``"enable_thinking": true``) turns it on, and the thinking arrives in ``reasoning_content`` beside
the answer in ``content``, as vLLM and SGLang do.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import psutil
import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chat.remote import RemoteBackend
from ..chat.reply import AnswerDelta, ChatDone, ChatEvent, Loading, ThinkingDelta, ToolCallDelta, stream_reply
from ..engine.engine import ChatEngine
from ..errors import (
    BackendError,
    ChatbotError,
    ContextLengthError,
    GenerationError,
    InvalidRequestError,
    QueueFullError,
)
from .api_models import ChatCompletion, ChatCompletionRequest, ErrorResponse, Health, ModelCard, ModelList
from .app_state import App
from .remote_view import remote_health
from .security import install_api_guards

log = logging.getLogger(__name__)

# How often a request that has not started streaming checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.25
# FastAPI's words for a body it cannot decode (invalid UTF-8, JSON nested past the parser's limit).
UNPARSABLE_BODY = "There was an error parsing the body"
# nginx's "client closed request": nobody reads it, but the access log says what happened.
CLIENT_CLOSED_STATUS = 499


class APIError(Exception):
    """An error answered with an OpenAI error body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ClientDisconnected(Exception):
    """The client went away before its reply was complete."""


def one_line(exc: BaseException) -> str:
    return str(exc).replace("\nFix: ", " Fix: ")


def api_error_from(exc: BaseException, engine: ChatEngine | RemoteBackend) -> APIError:
    """The HTTP status and OpenAI error for an error raised while answering a request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, one_line(exc), param=exc.param, code="context_length_exceeded")
    if isinstance(exc, InvalidRequestError):
        return APIError(400, one_line(exc), param=exc.param)
    if isinstance(exc, QueueFullError):
        return APIError(
            429,
            one_line(exc),
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, BackendError):  # the remote server (--backend): 502 for its errors, 503 unreachable
        return APIError(exc.status, one_line(exc), type="server_error", code=exc.code)
    if engine.status == "failed":
        return APIError(
            503,
            f"The model failed to load: {one_line(exc)} See GET /health and the server log.",
            type="server_error",
            code="model_unavailable",
        )
    if isinstance(exc, GenerationError):
        return APIError(500, one_line(exc), type="server_error", code="generation_failed")
    # Anything else is a bug: the client gets an id to quote, the details (paths, traceback) stay in the log.
    error_id = uuid.uuid4().hex[:12]
    log.error("Internal error %s while answering a request", error_id, exc_info=exc)
    return APIError(
        500, f"Internal error {error_id}: the server log has the details under this id.", type="server_error"
    )


# --- bridging the engine's blocking stream into the event loop ------------------------------------------------

_FINISHED = object()


class ReplyStream:
    """Runs ``stream_reply`` on a thread of its own and hands its events to the event loop.

    The engine's iterator blocks (waiting in the queue, then for each token), so it never runs on
    the event loop: other requests and ``/health`` stay responsive. ``cancel()`` stops the
    generation within one model step and frees the model for the next request.
    """

    def __init__(self, engine: ChatEngine | RemoteBackend, request: ChatCompletionRequest, client: str) -> None:
        self.engine = engine
        self._cancel = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._next_disconnect_check = 0.0
        self._thread = threading.Thread(
            target=self._produce,
            args=(
                request.plain_messages(),
                request.thinking(),
                {**request.sampling_kwargs(), **request.reply_kwargs()},
                client,
            ),
            name="api-request",
            daemon=True,
        )
        self._thread.start()

    def _produce(self, messages: list[dict[str, Any]], thinking: bool, sampling: dict[str, Any], client: str) -> None:
        try:
            events = stream_reply(
                self.engine, messages, enable_thinking=thinking, cancel=self._cancel, client=client, **sampling
            )
            for event in events:
                self._hand_over(event)
        except ChatbotError as exc:
            self._hand_over(exc)
        except Exception as exc:  # any failure must reach the waiting request, or it hangs
            log.exception("Answering an API request failed")
            self._hand_over(exc)
        finally:
            self._hand_over(_FINISHED)

    def _hand_over(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is stopping, nobody is listening
            self._cancel.set()

    def cancel(self) -> None:
        self._cancel.set()

    async def next_event(self, request: Request | None = None) -> ChatEvent:
        """The next event; raises the request's error as an ``APIError``.

        With ``request``, also watches for the client going away (``ClientDisconnected``); while
        streaming, the SSE response watches instead.
        """
        while True:
            if request is None:
                item = await self._events.get()
            else:
                await self._raise_if_disconnected(request)
                try:
                    item = await asyncio.wait_for(self._events.get(), DISCONNECT_POLL_SECONDS)
                except asyncio.TimeoutError:
                    continue
            if item is _FINISHED:
                raise APIError(500, "The reply ended without a result.", type="server_error")
            if isinstance(item, BaseException):
                raise api_error_from(item, self.engine)
            return item

    async def _raise_if_disconnected(self, request: Request) -> None:
        # Checked on a clock, not only when events pause: tokens may arrive without a break.
        now = time.monotonic()
        if now < self._next_disconnect_check:
            return
        self._next_disconnect_check = now + DISCONNECT_POLL_SECONDS
        if await request.is_disconnected():
            raise ClientDisconnected

    async def first_event(self, request: Request) -> ChatEvent:
        """The first event after loading: the request was accepted (queued or generating) or it failed."""
        event = await self.next_event(request)
        while isinstance(event, Loading):
            event = await self.next_event(request)
        return event

    async def result(self, request: Request) -> ChatDone:
        event = await self.first_event(request)
        while not isinstance(event, ChatDone):
            event = await self.next_event(request)
        return event


# --- OpenAI response bodies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """What every chunk or reply of one request repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> Completion:
        return cls(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model)


def usage(done: ChatDone) -> dict[str, int]:
    prompt, completion = int(done.stats["prompt_tokens"]), int(done.stats["new_tokens"])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(meta: Completion, done: ChatDone) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": done.answer if done.answer or not done.tool_calls else None,
        "refusal": None,
        "reasoning_content": done.thinking or None,
    }
    if done.tool_calls:
        message["tool_calls"] = [call.as_openai() for call in done.tool_calls]
    choice = {"index": 0, "message": message, "finish_reason": done.finish_reason, "logprobs": done.logprobs}
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": usage(done),
    }


def chunk_json(
    meta: Completion,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage_field: dict[str, int] | None = None,
    with_usage: bool = False,
    logprobs: dict[str, Any] | None = None,
) -> str:
    """One ``chat.completion.chunk``; ``delta=None`` makes the usage chunk (no choices)."""
    chunk: dict[str, Any] = {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}],
    }
    if with_usage:
        chunk["usage"] = usage_field
    return json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))


def shutting_down() -> APIError:
    return APIError(
        503, "The server is shutting down; the reply was stopped.", type="server_error", code="shutting_down"
    )


async def sse_chunks(reply: ReplyStream, first: ChatEvent, meta: Completion, include_usage: bool) -> AsyncIterator[str]:
    """The ``data:`` payloads of a streamed reply, ending with ``[DONE]``.

    Leaving early (the client disconnected, so the response task is cancelled) cancels the
    generation at once.
    """
    ended = False
    try:
        yield chunk_json(meta, {"role": "assistant", "content": ""}, with_usage=include_usage)
        event = first
        while not isinstance(event, ChatDone):
            if isinstance(event, ThinkingDelta):
                yield chunk_json(meta, {"reasoning_content": event.text}, with_usage=include_usage)
            elif isinstance(event, AnswerDelta):
                yield chunk_json(meta, {"content": event.text}, with_usage=include_usage)
            elif isinstance(event, ToolCallDelta):
                call = {"index": event.index, **event.call.as_openai()}
                yield chunk_json(meta, {"tool_calls": [call]}, with_usage=include_usage)
            event = await reply.next_event()
        ended = True
        if event.finish_reason == "cancelled":
            raise shutting_down()
        # The answer's log-probabilities travel with the last chunk, once the answer is known whole.
        yield chunk_json(meta, {}, event.finish_reason, with_usage=include_usage, logprobs=event.logprobs)
        if include_usage:
            yield chunk_json(meta, None, usage_field=usage(event), with_usage=True)
        log_reply(meta, event)
    except APIError as exc:
        ended = True
        # Headers are gone already: the error travels as a data event, which OpenAI clients raise.
        log.warning("%s failed while streaming: %s", meta.id, exc.message)
        yield json.dumps(exc.body(), ensure_ascii=False)
    finally:
        reply.cancel()
        if not ended:
            log.info("%s: the client disconnected mid-stream; generation stopped", meta.id)
    yield "[DONE]"


def log_reply(meta: Completion, done: ChatDone) -> None:
    stats = done.stats
    log.info(
        "%s: %s prompt + %s completion tokens, finish %s, %.2f s",
        meta.id,
        stats.get("prompt_tokens"),
        stats.get("new_tokens"),
        done.finish_reason,
        stats.get("total_seconds", 0.0),
    )


# --- health ---------------------------------------------------------------------------------------------------


def health_body(app: App) -> dict[str, Any]:
    engine = app.engine
    if isinstance(engine, RemoteBackend):
        return remote_health(app, engine)
    loaded = engine.loaded
    status = {"ready": "ready", "failed": "failed"}.get(engine.status, "loading")
    stage, fraction = engine.progress.snapshot()
    cuda = loaded is not None and loaded.device.type == "cuda" and torch.cuda.is_available()
    queue = engine.occupancy()
    return {
        "status": status,
        "model": app.model_name,
        "precision": loaded.precision.to_dict() if loaded else None,
        "memory": {
            "weights_bytes": loaded.weights_bytes if loaded else None,
            "process_rss_bytes": psutil.Process().memory_info().rss,
            "cuda_allocated_bytes": torch.cuda.memory_allocated(loaded.device) if cuda else None,
            "cuda_reserved_bytes": torch.cuda.memory_reserved(loaded.device) if cuda else None,
        },
        "queue": {**queue, "depth": queue["waiting"], "size": engine.queue_size, "busy": engine.busy},
        "load": {"stage": stage, "fraction": round(fraction, 3)},
        "error": one_line(engine.load_error) if engine.load_error is not None else None,
    }


# --- errors and the key ---------------------------------------------------------------------------------------


def validation_error(exc: RequestValidationError) -> APIError:
    """A 400 naming the first bad field, in the words a client can act on."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    location = [part for part in first.get("loc", ()) if part != "body"]
    param = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location).lstrip(".") or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return APIError(400, f"The request body is not valid JSON ({detail}).")
    if param is None:
        return APIError(
            400,
            "The request body must be a JSON object with a messages list; "
            "send it with the header 'Content-Type: application/json'.",
        )
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    others = len(errors) - 1
    more = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
    return APIError(400, f"{param}: {message}{more}", param=param)


def install_error_handlers(api: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return exc.response()

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_error(exc).response()

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        detail = str(exc.detail)
        if exc.status_code == 400 and detail == UNPARSABLE_BODY:
            detail = "The request body could not be read: send UTF-8 encoded JSON that is not nested absurdly deep."
        error = APIError(exc.status_code, detail, type=kind, headers=dict(exc.headers or {}))
        return error.response()

    api.add_exception_handler(APIError, on_api_error)
    api.add_exception_handler(RequestValidationError, on_validation_error)
    api.add_exception_handler(StarletteHTTPException, on_http_error)


# Module level: the dependency's annotation names it, and annotations resolve in the module's globals.
BEARER = HTTPBearer(auto_error=False, description="The key given to --api-key (or QWEN_API_KEY).")


def has_key(request: Request, key: SecretStr) -> bool:
    """Whether the request carries ``Authorization: Bearer <key>`` (compared in constant time)."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.get_secret_value().encode())


def client_key(request: Request) -> str:
    """Who is asking, for fair turns: the remote address, and the bearer key (hashed, never kept) if one is sent."""
    address = request.client.host if request.client else "unknown"
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return f"api:{address}:{hashlib.sha256(token.encode()).hexdigest()[:12]}"
    return f"api:{address}"


def api_key_guard(key: SecretStr) -> Callable[..., Any]:
    """A dependency that lets a request through only with ``Authorization: Bearer <key>``."""
    expected = key.get_secret_value().encode()

    async def require_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        if credentials is None:
            raise APIError(
                401,
                "Missing API key: send the header 'Authorization: Bearer KEY' with the key the server was "
                "started with (--api-key or QWEN_API_KEY).",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # Constant-time comparison: response timing must not reveal how much of a guess was right.
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise APIError(
                401,
                "Incorrect API key: use the key the server was started with (--api-key or QWEN_API_KEY).",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_key


# --- the app --------------------------------------------------------------------------------------------------

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A bad request: missing or malformed field, value out of range."},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key (only when the server has one)."},
    429: {"model": ErrorResponse, "description": "The queue is full; retry after Retry-After seconds."},
    500: {"model": ErrorResponse, "description": "Generation failed part-way; the server keeps serving."},
    503: {"model": ErrorResponse, "description": "The model failed to load, or the server is shutting down."},
}
STREAM_RESPONSE = {
    "description": "With stream false: a chat.completion. With stream true: Server-Sent Events, one "
    "chat.completion.chunk per data line, then data: [DONE].",
    "content": {
        "text/event-stream": {
            # One schema per event, as OpenAPI 3.2 describes event streams.
            "schema": {
                "type": "object",
                "properties": {
                    "data": {
                        "type": "string",
                        "description": "A chat.completion.chunk as JSON (or an error object), then [DONE].",
                    }
                },
                "required": ["data"],
            }
        }
    },
}


def build_api(app: App) -> FastAPI:
    """The API's FastAPI application, answering from ``app.engine`` under ``app.model_name``."""
    keyed = app.settings.api_key is not None
    api = FastAPI(
        title="Qwen3 Chat API",
        description="OpenAI-compatible chat completions over the same model and queue as the web UI.",
        version="1.0",
        # With a key, the schema is served below to key holders only, and there is no docs page (a
        # browser cannot send the key for the schema it loads).
        openapi_url=None if keyed else "/openapi.json",
        docs_url=None if keyed else "/docs",
        redoc_url=None if keyed else "/redoc",
    )
    install_error_handlers(api)
    install_api_guards(api, app.settings)
    started = int(time.time())
    guard = [Depends(api_key_guard(app.settings.api_key))] if app.settings.api_key is not None else []
    v1 = APIRouter(prefix="/v1", dependencies=guard)

    @v1.post(
        "/chat/completions",
        response_model=ChatCompletion,
        responses={200: STREAM_RESPONSE, **ERROR_RESPONSES},
        summary="Chat completion, streaming or not",
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        meta = Completion.new(app.model_name)
        reply = ReplyStream(app.engine, body, client_key(request))
        try:
            if body.stream:
                # Wait until the request is accepted, so that bad input or a full queue is still an
                # HTTP error status rather than an error inside a 200 stream.
                first = await reply.first_event(request)
                include_usage = body.stream_options is not None and body.stream_options.include_usage
                return EventSourceResponse(sse_chunks(reply, first, meta, include_usage), sep="\n")
            done = await reply.result(request)
        except ClientDisconnected:
            reply.cancel()
            log.info("%s: the client disconnected before the reply; generation stopped", meta.id)
            return Response(status_code=CLIENT_CLOSED_STATUS)
        except BaseException:
            reply.cancel()
            raise
        if done.finish_reason == "cancelled":
            raise shutting_down()
        log_reply(meta, done)
        return JSONResponse(completion_body(meta, done))

    @v1.api_route(
        "/models",
        methods=["GET", "HEAD"],
        response_model=ModelList,
        responses={401: ERROR_RESPONSES[401]},
        summary="The served model",
    )
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(app.model_name, started, context_window(app))]}

    @v1.api_route(
        "/models/{model_id:path}",
        methods=["GET", "HEAD"],
        response_model=ModelCard,
        responses={401: ERROR_RESPONSES[401], 404: {"model": ErrorResponse}},
        summary="One model, by its served name",
    )
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != app.model_name:
            raise APIError(
                404,
                f"Model {model_id!r} is not served here; this server has {app.model_name!r}.",
                code="model_not_found",
            )
        return model_card(app.model_name, started, context_window(app))

    @v1.post("/completions", status_code=404, responses={404: {"model": ErrorResponse}}, summary="Not served")
    async def completions() -> None:
        raise APIError(
            404,
            "The legacy text completion endpoint /v1/completions is not served: this model is a chat model. "
            "Use POST /v1/chat/completions with the text as a user message.",
            code="unsupported_endpoint",
        )

    @api.api_route(
        "/health",
        methods=["GET", "HEAD"],
        response_model=Health,
        responses={503: {"model": Health}},
        summary="Status and resources",
    )
    def health(request: Request) -> JSONResponse:
        body = health_body(app)
        status = 503 if body["status"] == "failed" else 200
        if app.settings.api_key is not None and not has_key(request, app.settings.api_key):
            # Without the key: only whether it serves; the model, its path, memory and errors need the key.
            return JSONResponse({"status": body["status"]}, status_code=status)
        return JSONResponse(body, status_code=status)

    if keyed:

        @api.get("/openapi.json", include_in_schema=False, dependencies=guard)
        def keyed_schema() -> dict[str, Any]:
            return api.openapi()

    api.include_router(v1)
    drop_unused_422(api)
    return api


def drop_unused_422(api: FastAPI) -> None:
    """Leave FastAPI's automatic 422 out of the schema: invalid requests get a 400 with an OpenAI body."""
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        return schema

    api.openapi = openapi  # type: ignore[method-assign]


def model_card(name: str, created: int, max_model_len: int | None = None) -> dict[str, Any]:
    """One model as vLLM lists it: ``max_model_len`` is the context window (null until it is known)."""
    return {"id": name, "object": "model", "created": created, "owned_by": "qwen3-chat", "max_model_len": max_model_len}


def context_window(app: App) -> int | None:
    """The loaded model's context, or the one a remote server reported."""
    if isinstance(app.engine, RemoteBackend):
        return app.engine.info().max_model_len
    return app.engine.loaded.max_context if app.engine.loaded is not None else None
