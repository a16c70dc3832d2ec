"""The value the web UI and the API share: settings, the one backend (local model or remote server), the name.

``server`` creates it; ``api`` and ``ui`` receive it. It lives apart from ``server`` so that the two
servers import it without importing the module that starts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..chat.backend import Backend
from ..chat.backends import as_backend
from ..settings import Settings
from .metrics import ServerMetrics
from .metrics_backend import MeteredBackend

DEMO_NAME = "qwen3-chat-demo"


def served_name(settings: Settings) -> str | None:
    """The name clients see: ``--served-model-name``, else the hub id, else the folder's name.

    Never an absolute path: it would tell every client where the server keeps its files. With
    ``--backend``: ``--backend-model``, else None (the name the remote server reports).
    """
    if settings.served_model_name:
        return settings.served_model_name
    if settings.backend:
        return settings.backend_model
    if settings.demo:
        return DEMO_NAME
    path = Path(settings.model).expanduser()
    if path.exists() or path.is_absolute() or settings.model.startswith((".", "~")):
        return path.resolve().name
    return settings.model  # a hub id such as Qwen/Qwen3-0.6B-FP8


REMOTE_PLACEHOLDER_NAME = "remote-model"  # until a --backend server that names no model has answered


@dataclass
class App:
    settings: Settings
    backend: Backend  # a ChatEngine given here is wrapped in its LocalBackend
    name: str | None  # the name clients see (API "model", UI title); None: the remote server's own

    metrics: ServerMetrics = field(init=False)  # GET /metrics; every reply of self.backend is recorded in it

    def __post_init__(self) -> None:
        given: Any = self.backend
        backend = given.inner if isinstance(given, MeteredBackend) else as_backend(given)
        self.metrics = ServerMetrics(backend)
        self.backend = MeteredBackend(backend, self.metrics)

    @property
    def model_name(self) -> str:
        return self.name or self.backend.model_name or REMOTE_PLACEHOLDER_NAME
