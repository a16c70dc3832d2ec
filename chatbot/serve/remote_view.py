"""What the badge says when a remote server answers (``--backend``).

Everything shown is what the server reported about itself (its URL, the model it lists, its context
length when ``/v1/models`` has ``max_model_len``, whether it answers) or what the operator stated
(``--backend-precision``); nothing is guessed.
"""

from __future__ import annotations

import html

from ..chat.backend import BackendInfo, BackendStatus


def remote_badge_html(backend: BackendStatus, info: BackendInfo) -> str:
    """The badge: "remote" (green), "connecting" (purple) or "unreachable" (red), the URL and model, the error."""
    status = backend.state
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
