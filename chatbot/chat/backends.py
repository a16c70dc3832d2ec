"""Which backend answers: ``as_backend`` (a ``ChatEngine`` given by a caller, wrapped) and
``backend_from_settings`` (``--backend URL``, else the model loaded here)."""

from __future__ import annotations

from typing import Any

from ..engine.engine import ChatEngine
from .backend import Backend
from .local import LocalBackend
from .remote import RemoteBackend


def as_backend(engine: Any) -> Backend:
    """``engine`` as a ``Backend``: a ``ChatEngine`` gets its ``LocalBackend``; a backend is itself."""
    return LocalBackend(engine) if isinstance(engine, ChatEngine) else engine


def backend_from_settings(settings: Any, source: str | None = None) -> Backend:
    """The backend ``settings`` ask for: the remote server of ``--backend``, else the model ``source``
    (default ``settings.model``) loaded here (lazily: nothing loads until used or ``start_loading()``)."""
    if settings.backend:
        return RemoteBackend.from_settings(settings)
    return LocalBackend(ChatEngine.from_settings(settings, source))
