"""Serving: one process, one engine, the web UI on ``--port`` (7860) and the API on ``--api-port`` (8000).

The checkpoint is located before anything starts, so a missing model fails in seconds with a
message naming ``--model PATH`` and ``--demo``; the weights then load in the background while the
UI already shows "loading..." with progress.
"""

from __future__ import annotations

import atexit
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..authoring.modelgen import ensure_demo_model
from ..chat.local import LocalBackend
from ..chat.remote import RemoteBackend
from ..engine.engine import ChatEngine
from ..model.checkpoint import inspect_checkpoint, resolve_checkpoint
from ..settings import Settings
from . import log_limits
from .app_state import App, served_name
from .drain import DrainingBackend
from .slow_clients import DeadlineH11Protocol

log = logging.getLogger(__name__)
API_CONNECTION_LIMIT = 1000
FLUSH_SECONDS = 1.0


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log_limits.install()


def create_app(settings: Settings) -> App:
    """Locate the checkpoint (fail fast), create the engine and start loading in the background
    (with ``--backend``: connect to the remote server instead).

    Raises:
        CheckpointError, ModelUnavailableError: the model cannot be found or is broken.
    """
    if settings.backend:
        return create_remote_app(settings)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    source = str(ensure_demo_model()) if settings.demo else settings.model
    path = resolve_checkpoint(source)
    inspect_checkpoint(path, source)
    backend = LocalBackend(ChatEngine.from_settings(settings, source))
    backend.start_loading()
    return App(settings, backend, served_name(settings))


def create_remote_app(settings: Settings) -> App:
    """The app in front of the OpenAI-compatible server at ``--backend``: nothing loads here.

    The server's first answer is awaited a few seconds (so the page shows its model's name); an
    unreachable server does not stop the start: the app keeps retrying and says so.
    """
    backend = RemoteBackend.from_settings(settings)
    info = backend.load()
    if info.reachable:
        log.info("Answering from %s", backend.summary())
    else:
        log.warning("The model server at %s is not reachable yet; retrying with backoff: %s", info.url, info.error)
    return App(settings, backend, served_name(settings))


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
        http=DeadlineH11Protocol,  # connections that never finish their headers are closed
        limit_concurrency=API_CONNECTION_LIMIT,  # beyond it: 503 at once, instead of running out of files
        timeout_graceful_shutdown=5,  # after the drain: connections still open are closed, not waited for
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name="api-server", daemon=True).start()
    log.info("OpenAI-compatible API on http://%s:%d/v1", app.settings.host, app.settings.api_port)
    return server


def private_temp_dir() -> Path:
    """A folder only this user can open (0700) for the page's uploads and exports, removed at exit.

    Gradio's default is the shared, predictable /tmp/gradio, where files stay readable (0644) and a
    folder or link planted there by another user would be used.
    """
    folder = Path(tempfile.mkdtemp(prefix="qwen3-chat-"))  # mkdtemp: a new folder, mode 0700
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "uploads")
    tempfile.tempdir = str(folder)  # exports made with tempfile land inside it too
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def raise_open_file_limit(wanted: int = 65536) -> None:
    """Raise the soft limit on open files towards the hard one: each connection, idle or not, holds one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def drain_then_stop(draining: DrainingBackend, grace: float) -> None:
    """SIGTERM's handler: drain the replies on a thread of its own, then stop the servers as Ctrl+C does."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("SIGTERM: shutting down (at most %.0f s for the running replies)", grace)

    def drain() -> None:
        draining.drain(grace)
        time.sleep(FLUSH_SECONDS)  # the last events reach their clients before the servers close
        os.kill(os.getpid(), signal.SIGINT)  # launch() returns or raises as on Ctrl+C; serve() stops the API

    threading.Thread(target=drain, name="drain", daemon=True).start()


def serve(settings: Settings, warnings: list[str] | None = None) -> None:
    """Run the web UI and the API until interrupted; ``warnings`` are logged first."""
    configure_logging(settings.log_level)
    for warning in [*(warnings or []), exposure_warning(settings)]:
        if warning:
            log.warning(warning)
    raise_open_file_limit()
    private_temp_dir()
    # SIGTERM (docker stop, systemd, kill) while starting ends the process like Ctrl+C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl+C stops the servers, and the SIGTERM drain stops them the same way, even when the process was
    # started with SIGINT ignored (a background job of a script: `./start.sh &`), where Python would not
    # install its handler and both would do nothing: the process never ended after a drain.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    app = create_app(settings)
    draining = DrainingBackend(app.backend)
    app.backend = draining  # the same Backend, with a count of running replies
    api_server = start_api(app)
    # From now on SIGTERM drains first: no new requests, running replies get the grace period, the rest
    # end with a message; a second SIGTERM ends the process at once.
    signal.signal(signal.SIGTERM, lambda *_: drain_then_stop(draining, settings.shutdown_grace_seconds))
    from .ui import launch_ui

    try:
        launch_ui(app)
    except KeyboardInterrupt:
        if not draining.closing.is_set():
            raise
        # The drain's own stop reached launch() before Gradio's loop that catches it: a clean stop all the same.
    finally:
        if api_server is not None:
            api_server.should_exit = True
        app.backend.close()
