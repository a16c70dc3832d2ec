"""What the badge and ``/health`` say when a remote server answers (``--backend``).

Everything shown is what the server reported about itself (its URL, the model it lists, its context
length when ``/v1/models`` has ``max_model_len``, whether it answers) or what the operator stated
(``--backend-precision``); nothing is guessed.
"""

from __future__ import annotations

import html
from typing import Any

import psutil

from ..chat.remote import RemoteBackend
from .app_state import App


def remote_badge_html(backend: RemoteBackend) -> str:
    """The badge: "remote" (green), "connecting" (purple) or "unreachable" (red), the URL and model, the error."""
    info = backend.info()
    status = backend.status
    details = [html.escape(info.model or "model not reported yet"), html.escape(info.url)]
    if info.max_model_len:
        details.append(f"context {info.max_model_len:,}")
    if info.precision:
        details.append(f"{html.escape(info.precision)} (stated by the operator)")
    device = f'<span class="qc-badge-device">{" · ".join(details)}</span>'
    if status == "ready":
        return (
            '<div class="qc-badge qc-badge-remote" data-status="ready" data-backend="remote">'
            f'<span class="qc-badge-mode">remote</span>{device}'
            '<div class="qc-badge-reason">Answers come from the OpenAI-compatible server above; '
            "nothing is loaded here.</div></div>"
        )
    if status == "failed":
        return (
            '<div class="qc-badge qc-badge-failed" data-status="failed" data-backend="remote">'
            f'<span class="qc-badge-mode">model server unreachable</span>{device}'
            f'<div class="qc-badge-reason">{html.escape(info.error or "")}</div></div>'
        )
    return (
        '<div class="qc-badge qc-badge-loading" data-status="loading" data-backend="remote">'
        f'<span class="qc-badge-mode">connecting…</span>{device}</div>'
    )


def remote_health(app: App, backend: RemoteBackend) -> dict[str, Any]:
    """``/health`` over a remote backend: the same keys as for a local model, plus ``backend``."""
    info = backend.info()
    status = {"ready": "ready", "failed": "failed"}.get(backend.status, "loading")
    queue = backend.occupancy()
    return {
        "status": status,
        "model": app.model_name,
        "precision": None,  # no decision is made here; the operator's statement is in backend.precision
        "memory": {
            "weights_bytes": None,
            "process_rss_bytes": psutil.Process().memory_info().rss,
            "cuda_allocated_bytes": None,
            "cuda_reserved_bytes": None,
        },
        "queue": {**queue, "depth": queue["waiting"], "size": backend.queue_size, "busy": backend.busy},
        "load": {
            "stage": "connected" if info.reachable else f"connecting to {info.url}",
            "fraction": 1.0 if info.reachable else 0.0,
        },
        "error": info.error,
        "backend": info.to_dict(),
    }
