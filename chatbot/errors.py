"""Errors a user can act on: each says what went wrong, where, and what to do."""

from __future__ import annotations

from pathlib import Path


class ChatbotError(Exception):
    """Base class of every error this package raises on purpose."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\nFix: {self.fix}"


class CheckpointError(ChatbotError):
    """A checkpoint folder, file or tensor that cannot be used, naming the file."""

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        text = f"{self.path}: {message}" if self.path else message
        super().__init__(text, fix=fix)


class ModelUnavailableError(ChatbotError):
    """The model could not be found or fetched (no network, unknown hub id)."""


class PrecisionError(ChatbotError):
    """No precision in the fallback chain could load and run the model."""


class InvalidRequestError(ChatbotError):
    """A request with a bad value; ``param`` names the offending field."""

    def __init__(self, message: str, *, param: str | None = None, fix: str | None = None) -> None:
        self.param = param
        super().__init__(message, fix=fix)


class ContextLengthError(InvalidRequestError):
    """The newest message does not fit the context window even with all history dropped."""


class QueueFullError(ChatbotError):
    """Too many requests are already waiting for the model."""

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        self.retry_after = retry_after
        super().__init__(message, fix=f"Try again in {retry_after} s.")


class GenerationError(ChatbotError):
    """Generation failed part-way; the request ends, the server keeps serving."""


class DeviceFaultError(ChatbotError):
    """The GPU faulted while generating (illegal address, launch failure): CUDA cannot be used again in this
    process, so the engine stops serving and every request fails with this error until a restart."""


class BackendError(ChatbotError):
    """The remote model server (``--backend``) answered with an error; the API passes it on as a 502."""

    status = 502
    code = "backend_error"


class BackendUnavailableError(BackendError):
    """The remote model server cannot be reached (or says it cannot serve now); the API answers 503."""

    status = 503
    code = "backend_unavailable"
