"""The API's errors: OpenAI's error body, the HTTP status of each failure, and FastAPI's handlers.

Every failure reaches the client as ``{"error": {"message", "type", "param", "code"}}`` with a
status a client can act on (400 bad input, 401 key, 404, 429 queue full with ``Retry-After``, 500,
503); an unexpected one as an id to quote, its details only in the server log.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chat.backend import Backend
from ..errors import (
    BackendError,
    ContextLengthError,
    DeviceFaultError,
    GenerationError,
    InvalidRequestError,
    QueueFullError,
)
from .api_models import ErrorResponse

log = logging.getLogger(__name__)

# FastAPI's words for a body it cannot decode (invalid UTF-8, JSON nested past the parser's limit).
UNPARSABLE_BODY = "There was an error parsing the body"


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


def api_error_from(exc: BaseException, backend: Backend) -> APIError:
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
    if isinstance(exc, DeviceFaultError):  # serving ended: a restart is the fix
        return APIError(503, one_line(exc), type="server_error", code="device_fault")
    if backend.status().state == "failed":
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


def shutting_down() -> APIError:
    return APIError(
        503, "The server is shutting down; the reply was stopped.", type="server_error", code="shutting_down"
    )


def validation_error(exc: RequestValidationError) -> APIError:
    """A 400 naming the first bad field, in the words a client can act on."""
    errors = exc.errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request", "type": ""}
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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A bad request: missing or malformed field, value out of range."},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key (only when the server has one)."},
    429: {"model": ErrorResponse, "description": "The queue is full; retry after Retry-After seconds."},
    500: {"model": ErrorResponse, "description": "Generation failed part-way; the server keeps serving."},
    503: {"model": ErrorResponse, "description": "The model failed to load, or the server is shutting down."},
}
