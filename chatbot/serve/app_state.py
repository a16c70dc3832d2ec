"""The value the web UI and the API share: settings, the one engine, and the model name clients see.

``server`` creates it; ``api`` and ``ui`` receive it. It lives apart from ``server`` so that the two
servers import it without importing the module that starts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..engine.engine import ChatEngine
from ..settings import Settings

DEMO_NAME = "qwen3-chat-demo"


def served_name(settings: Settings) -> str:
    """The name clients see: ``--served-model-name``, else the hub id, else the folder's name.

    Never an absolute path: it would tell every client where the server keeps its files.
    """
    if settings.served_model_name:
        return settings.served_model_name
    if settings.demo:
        return DEMO_NAME
    path = Path(settings.model).expanduser()
    if path.exists() or path.is_absolute() or settings.model.startswith((".", "~")):
        return path.resolve().name
    return settings.model  # a hub id such as Qwen/Qwen3-0.6B-FP8


@dataclass
class App:
    settings: Settings
    engine: ChatEngine
    model_name: str  # the name clients see (API "model", UI title)
