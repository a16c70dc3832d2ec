"""Uploads to the web chat are deleted once used, and one address cannot pile them up.

Gradio kept every file sent to ``/gradio_api/upload`` until the process ended (forty 9 MiB files in 2.7 s,
anonymous). Probed over loopback: one address uploads many files in parallel and is refused past its
quota; another imports a chat and its upload is gone afterwards. Run:
``.venv/bin/python -m pytest tests/app/test_bounds_uploads.py -q``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from helpers.app import RunningApp

from chatbot.serve.uploads import MAX_HELD_UPLOADS

ATTEMPTS = 12
FILE_BYTES = 2**20


def upload(url: str, address: str, content: bytes) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(transport=transport, timeout=60) as client:
        return client.post(url + "/gradio_api/upload", files={"files": ("chat.json", content, "application/json")})


def test_one_address_holds_a_few_uploads_and_an_import_deletes_its_file(demo_app: RunningApp) -> None:
    filler = b" " * FILE_BYTES
    with ThreadPoolExecutor(ATTEMPTS) as pool:
        answers = list(pool.map(lambda _: upload(demo_app.ui_url, "127.0.0.3", filler), range(ATTEMPTS)))
    kept = [path for answer in answers if answer.status_code == 200 for path in answer.json()]
    refused = [answer for answer in answers if answer.status_code == 429]
    assert len(kept) <= MAX_HELD_UPLOADS and len(kept) + len(refused) == ATTEMPTS
    assert "Too many uploads" in refused[0].json()["error"]["message"] and refused[0].headers["Retry-After"]

    chat = {"format": "qwen3-chat-conversation", "title": "t", "messages": [{"role": "user", "content": "hello"}]}
    answer = upload(demo_app.ui_url, "127.0.0.1", json.dumps(chat).encode())
    assert answer.status_code == 200
    [path] = answer.json()
    assert Path(path).is_file()
    with httpx.Client(base_url=demo_app.ui_url, timeout=60) as page:
        page.get("/config")  # the browser cookie
        file = {"path": path, "orig_name": "chat.json", "meta": {"_type": "gradio.FileData"}}
        opened = page.post("/gradio_api/run/import_conversation", json={"data": [file, ""], "session_hash": "importer"})
    assert opened.status_code == 200, opened.text[:500]
    assert "hello" in json.dumps(opened.json())  # the chat was opened
    assert not Path(path).exists()  # and its upload deleted
