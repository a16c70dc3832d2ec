"""The value the web UI and the API share: settings, the one engine, and the model name clients see.

``server`` creates it; ``api`` and ``ui`` receive it. It lives apart from ``server`` so that the two
servers import it without importing the module that starts them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.engine import ChatEngine
from ..settings import Settings

DEMO_NAME = "qwen3-chat-demo"


@dataclass
class App:
    settings: Settings
    engine: ChatEngine
    model_name: str  # the name clients see (API "model", UI title)
