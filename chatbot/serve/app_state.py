"""The value the web UI and the API share: settings, the one engine (or remote backend), the model name.

``server`` creates it; ``api`` and ``ui`` receive it. It lives apart from ``server`` so that the two
servers import it without importing the module that starts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..chat.remote import RemoteBackend
from ..engine.engine import ChatEngine
from ..settings import Settings

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
    engine: ChatEngine | RemoteBackend
    name: str | None  # the name clients see (API "model", UI title); None: the remote server's own

    @property
    def model_name(self) -> str:
        if self.name:
            return self.name
        remote = self.engine.model_name if isinstance(self.engine, RemoteBackend) else None
        return remote or REMOTE_PLACEHOLDER_NAME
