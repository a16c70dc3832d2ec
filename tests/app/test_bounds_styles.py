"""Positioning styles in messages never reach the page: a ``position:fixed`` link in an imported chat covered
the whole page and took its clicks. Probed through the page's own API on the shared demo app (what the
Chatbot is given to draw), and on the cases the cleaning must not miss. Run:
``.venv/bin/python -m pytest tests/app/test_bounds_styles.py -q``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.app import RunningApp

from chatbot.serve.ui_styles import without_positioning

COVER = '<a href="https://example.com" style="position:fixed;inset:0;z-index:99999;color:red">click</a>'


def test_an_imported_message_loses_its_positioning_style(demo_app: RunningApp, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    messages = [{"role": "user", "content": "Look: " + COVER}, {"role": "assistant", "content": "Seen " + COVER}]
    chat = {"format": "qwen3-chat-conversation", "title": "styled", "messages": messages}
    path = tmp_path / "styled.json"
    path.write_text(json.dumps(chat), encoding="utf-8")
    shown, *_ = Client(demo_app.ui_url, verbose=False).predict(handle_file(str(path)), api_name="/import_conversation")
    drawn = json.dumps(shown)
    assert "click" in drawn and "color:red" in drawn  # the message and its harmless style are kept
    for gone in ("position", "inset", "z-index"):
        assert gone not in drawn, drawn


@pytest.mark.parametrize(
    "text",
    [
        '<a title=">" style="position:fixed">x</a>',  # a quoted ">" before the style
        '<a/style="position:absolute">x</a>',  # "/" stands for a space
        '<a style="&#112;osition:fixed">x</a>',  # a character reference
        '<a style="pos\\69 tion:fixed">x</a>',  # a CSS escape
        "<a style=position:sticky>x</a>",  # unquoted
        '<div style="z-index:9;transform:translate(0,-100px)">x</div>',
    ],
)
def test_positioning_is_taken_out_however_it_is_written(text: str) -> None:
    cleaned = without_positioning(text).lower()
    assert all(word not in cleaned for word in ("position", "z-index", "transform", "&#112;", "\\69")), cleaned


def test_code_keeps_its_text() -> None:
    shown = '```css\n.x { position: fixed }\n<a style="position:fixed">\n```\nand `style="top:0"` too'
    assert without_positioning(shown) == shown
