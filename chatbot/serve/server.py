"""Serving: one process, one engine, the web UI on ``--port`` (7860) and the API on ``--api-port`` (8000).

The checkpoint is located before anything starts, so a missing model fails in seconds with a
message naming ``--model PATH`` and ``--demo``; the weights then load in the background while the
UI already shows "loading..." with progress.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from ..authoring.modelgen import ensure_demo_model
from ..engine.engine import ChatEngine
from ..model.checkpoint import inspect_checkpoint, resolve_checkpoint
from ..settings import Settings
from .app_state import App, served_name

log = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def create_app(settings: Settings) -> App:
    """Locate the checkpoint (fail fast), create the engine and start loading in the background.

    Raises:
        CheckpointError, ModelUnavailableError: the model cannot be found or is broken.
    """
    if settings.threads:
        torch.set_num_threads(settings.threads)
    source = str(ensure_demo_model()) if settings.demo else settings.model
    path = resolve_checkpoint(source)
    inspect_checkpoint(path, source)
    engine = ChatEngine.from_settings(settings, source)
    engine.start_loading()
    return App(settings, engine, served_name(settings))


def exposure_warning(settings: Settings) -> str | None:
    """A warning when the servers listen beyond this machine without any login or key."""
    if settings.host in ("127.0.0.1", "localhost", "::1"):
        return None
    missing = []
    if settings.auth is None:
        missing.append("the web UI has no login (--auth user:password)")
    if settings.api_port and settings.api_key is None:
        missing.append("the API has no key (--api-key)")
    if not missing:
        return None
    return f"Listening on {settings.host}: anyone on the network can use this server; " + " and ".join(missing) + "."


def start_api(app: App) -> Any | None:
    """Start the API server in a background thread; returns the uvicorn server (None when --api-port 0)."""
    if not app.settings.api_port:
        return None
    import uvicorn

    from .api import build_api

    config = uvicorn.Config(
        build_api(app),
        host=app.settings.host,
        port=app.settings.api_port,
        log_level=app.settings.log_level,
        access_log=False,
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name="api-server", daemon=True).start()
    log.info("OpenAI-compatible API on http://%s:%d/v1", app.settings.host, app.settings.api_port)
    return server


def serve(settings: Settings) -> None:
    """Run the web UI and the API until interrupted."""
    configure_logging(settings.log_level)
    warning = exposure_warning(settings)
    if warning:
        log.warning(warning)
    app = create_app(settings)
    api_server = start_api(app)
    from .ui import launch_ui

    try:
        launch_ui(app)
    finally:
        if api_server is not None:
            api_server.should_exit = True
        app.engine.close()
