"""Files uploaded to the web chat (conversation imports, attached files) are deleted after use and bounded per client.

Gradio keeps every upload (``/gradio_api/upload``) in ``GRADIO_TEMP_DIR`` until the process ends, and
anyone who can reach the page may upload: forty 9 MiB files took 2.7 s and stayed. Here:

* ``UploadQuota`` (ASGI middleware on Gradio's app) lets one address hold at most ``MAX_HELD_UPLOADS``
  uploads at a time, counting those still arriving; beyond that it answers 429 with Retry-After. Files
  it saw arrive are deleted ``UPLOAD_TTL_SECONDS`` after they came, used or not;
* ``discard_upload`` deletes an upload as soon as its event has read it (the import handler's wrapper,
  ``ui_attach.attach`` for attached files).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from .security import send_json_error

log = logging.getLogger(__name__)
UPLOAD_PATH = "/gradio_api/upload"
MAX_HELD_UPLOADS = 4  # the page uploads one file per import (files picked together: one upload), deleted once read
UPLOAD_TTL_SECONDS = 300.0
ADDRESSES_KEPT = 10_000


def uploads_folder() -> Path | None:
    folder = os.environ.get("GRADIO_TEMP_DIR")
    return Path(folder).resolve() if folder else None


def discard_upload(file: Any) -> None:
    """Delete ``file`` (a path Gradio gave an event) if it is an upload in this app's folder; anything else
    is left alone."""
    folder = uploads_folder()
    if not isinstance(file, str) or folder is None:
        return
    path = Path(file).resolve()
    if folder not in path.parents:
        return
    try:
        path.unlink(missing_ok=True)
        path.parent.rmdir()  # Gradio puts each upload in a folder of its own
    except OSError as exc:  # a folder holding something else: it stays
        log.debug("Kept %s: %s", path.parent, exc)


class UploadQuota:
    """ASGI middleware: at most ``limit`` uploads held or arriving per address (see the module docstring)."""

    def __init__(self, app, limit: int = MAX_HELD_UPLOADS, ttl: float = UPLOAD_TTL_SECONDS) -> None:
        self.app, self.limit, self.ttl = app, limit, ttl
        self.held: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()  # address -> (arrived, path)
        self.arriving: dict[str, int] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != UPLOAD_PATH:
            await self.app(scope, receive, send)
            return
        address = (scope.get("client") or ("unknown", 0))[0]
        if self.count(address) + self.arriving.get(address, 0) >= self.limit:
            log.warning("Refused an upload from %s: it holds %d uploads already", address, self.limit)
            message = (
                f"Too many uploads at once from this address (at most {self.limit}): "
                "wait for those under way, then try again."
            )
            await send_json_error(send, 429, message, "too_many_uploads", [(b"retry-after", b"10")])
            return
        self.arriving[address] = self.arriving.get(address, 0) + 1
        body = bytearray()

        async def keep_paths(message) -> None:
            if message["type"] == "http.response.body" and len(body) < 64 * 1024:
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, keep_paths)
        finally:
            self.arriving[address] -= 1
            if not self.arriving[address]:
                del self.arriving[address]
        self.remember(address, body)

    def remember(self, address: str, body: bytes | bytearray) -> None:
        try:
            paths = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return  # refused by Gradio (too large, not a form): nothing was kept
        if not isinstance(paths, list):
            return
        kept = self.held.pop(address, None) or deque()
        kept.extend((time.monotonic(), path) for path in paths if isinstance(path, str))
        self.held[address] = kept
        if len(self.held) > ADDRESSES_KEPT:
            for _, path in self.held.popitem(last=False)[1]:
                discard_upload(path)

    def count(self, address: str) -> int:
        """Uploads ``address`` holds now; those past their time are deleted first, those already used forgotten."""
        kept = self.held.get(address)
        if not kept:
            return 0
        now = time.monotonic()
        while kept and now - kept[0][0] > self.ttl:
            discard_upload(kept.popleft()[1])
        for entry in [entry for entry in kept if not os.path.exists(entry[1])]:
            kept.remove(entry)
        return len(kept)
