"""Files attached to a web chat message: read as text (PDFs too), written into the message and found again.

Pure Python, no model: ``.venv/bin/python -m pytest tests/unit/test_attachments.py -q``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.pdf import tiny_pdf

from chatbot.errors import ChatbotError
from chatbot.serve.attachments import Attachment, clean_name, compose, read_attachment, split, with_typed_text
from chatbot.serve.ui_attach import (
    MAX_ATTACHED,
    attach,
    chips_html,
    detach,
    not_kept_notice,
    reclaim,
    restore_kept,
    shown,
)
from chatbot.serve.ui_render import user_messages
from chatbot.serve.ui_session import title_of

LIMIT = 1_000_000


def file(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_a_message_with_files_splits_back_into_its_typed_text_and_files() -> None:
    files = [Attachment("a.py", "print(1)\n"), Attachment("notes.md", "# Notes\n\nline")]
    combined = compose("What do these do?", files)
    assert combined.startswith('<file name="a.py" chars="9">\nprint(1)\n\n</file>\n\n<file name="notes.md"')
    assert combined.endswith("</file>\n\nWhat do these do?")  # files first: an edit keeps their prompt prefix
    assert split(combined) == ("What do these do?", files)
    assert split(compose("", files)) == ("", files)
    assert split("plain text") == ("plain text", [])


def test_a_file_holding_block_markers_splits_exactly() -> None:
    tricky = Attachment("x.txt", 'a\n</file>\n\n<file name="fake" chars="3">\nabc\n</file>')
    combined = compose("Look", [tricky, Attachment("y.txt", "y")])
    assert split(combined) == ("Look", [tricky, Attachment("y.txt", "y")])


def test_typed_blocks_that_do_not_add_up_stay_text() -> None:
    text = '<file name="a" chars="99">\nshort\n</file>\n\nExplain'
    assert split(text) == (text, [])
    assert split('<file name="a" chars="1">\nA\n</file>\n\n<file name="b" chars="9">\nB') == (
        '<file name="b" chars="9">\nB',
        [Attachment("a", "A")],
    )


def test_an_edit_keeps_the_files() -> None:
    combined = compose("old", [Attachment("a.txt", "A")])
    assert with_typed_text(combined, "new") == compose("new", [Attachment("a.txt", "A")])


def test_text_and_code_files_are_read_with_unix_line_ends(tmp_path: Path) -> None:
    assert read_attachment(file(tmp_path, "data.csv", "a,b\r\n1,2\r\n"), LIMIT).text == "a,b\n1,2\n"
    assert read_attachment(file(tmp_path, "Makefile", "all:\n\ttrue\n"), LIMIT).name == "Makefile"
    utf16 = file(tmp_path, "notes.txt", "héllo".encode("utf-16"))  # with its byte order mark
    assert read_attachment(utf16, LIMIT).text == "héllo"


def test_a_pdf_is_read_as_its_text(tmp_path: Path) -> None:
    pdf = file(tmp_path, "paper.pdf", tiny_pdf(["First page (intro)", "Second page"]))
    assert read_attachment(pdf, LIMIT).text == "First page (intro)\n\nSecond page"


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00", "a .png file"),
        ("archive", b"PK\x03\x04", "without a known type"),
        ("fake.txt", b"text\x00\x01binary", "binary data"),
        ("latin.txt", "caf\xe9".encode("latin-1"), "not UTF-8"),
        ("broken.pdf", b"%PDF-1.4 nothing else", "cannot be read as a PDF"),
        ("empty.md", b"  \n", "is empty"),
    ],
)
def test_other_files_are_refused_saying_what_is_accepted(tmp_path: Path, name: str, data: bytes, says: str) -> None:
    with pytest.raises(ChatbotError) as caught:
        read_attachment(file(tmp_path, name, data), LIMIT)
    assert says in caught.value.message and name in caught.value.message
    if says in ("a .png file", "without a known type", "binary data"):
        assert ".txt" in (caught.value.fix or "") and "PDF" in (caught.value.fix or "")


def test_a_file_past_the_limit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ChatbotError, match="at most 10"):
        read_attachment(file(tmp_path, "big.txt", "x" * 11), 10)


def test_names_are_one_line_without_quotes() -> None:
    assert clean_name('C:\\docs\\my "best"<file>.txt') == "my _best__file_.txt"
    assert len(clean_name("n" * 500 + ".txt")) == 120


def test_attaching_reads_each_file_and_refuses_the_rest(tmp_path: Path) -> None:
    paths = [str(file(tmp_path, "a.md", "# A")), str(file(tmp_path, "b.exe", b"MZ\x00"))]
    pending, notice = attach(paths, [], LIMIT)
    assert pending == [{"name": "a.md", "text": "# A"}]
    assert "b.exe" in notice and "PDF" in notice
    assert "a.md" in chips_html(pending) and "qc-detach-0" in chips_html(pending)
    assert detach("0", pending) == [] and detach("5", pending) == pending


def test_edit_last_takes_the_files_back_to_the_chips() -> None:
    box, pending = reclaim(compose("Question", [Attachment("a.txt", "A")]), [])
    assert box == "Question" and pending == [{"name": "a.txt", "text": "A"}]


def test_the_files_the_page_kept_come_back_within_the_bounds_of_attaching() -> None:
    waiting = [{"name": "a.md", "text": "# A"}, {"name": "b.csv", "text": "x,y"}]
    chips, kept = shown(waiting)
    assert "b.csv" in chips and json.loads(kept) == waiting
    back, _, kept_now = restore_kept(kept, [], LIMIT)
    assert back == waiting and kept_now == kept
    assert not isinstance(restore_kept("", [], LIMIT)[0], list)  # nothing kept: nothing changes (gr.skip)
    # Added since the load first; past the count or the characters a chat holds, named, not put back.
    later = [{"name": "c.txt", "text": "C"}]
    back, notice, kept_now = restore_kept(kept, later, 5)
    assert back == [*later, waiting[0]] and "b.csv" in notice and "a.md" not in notice
    assert json.loads(kept_now) == back  # the page keeps what came back, no more
    many = json.dumps([{"name": f"{i}.txt", "text": "t"} for i in range(MAX_ATTACHED + 1)])
    assert len(restore_kept(many, [], LIMIT)[0]) == MAX_ATTACHED
    # A file the browser could keep by name only: named, to attach again; a page's malformed entry: left out.
    back, notice, _ = restore_kept(json.dumps([{"name": "big.pdf", "chars": 9}, {"text": 3}, *waiting]), [], LIMIT)
    assert back == waiting and "big.pdf" in notice and "Attach it again" in notice


def test_files_the_browser_cannot_keep_are_named_when_attached() -> None:
    notice = not_kept_notice(json.dumps([{"name": "big<1>.txt", "chars": 6_000_000}]))
    assert "big&lt;1&gt;.txt" in notice and "6,000,000 characters" in notice and "reload" in notice
    assert not isinstance(not_kept_notice(""), str) and not isinstance(not_kept_notice("[]"), str)


def test_a_question_with_files_is_drawn_as_its_text_then_each_file_folded() -> None:
    drawn = user_messages(compose("Read this", [Attachment("my_notes.md", "```\ncode\n```")]))
    assert drawn[1] == {"role": "user", "content": "Read this"}
    assert drawn[0]["metadata"]["title"].startswith("my\\_notes.md · 12 characters")
    assert drawn[0]["content"].startswith("````markdown\n```\ncode")
    assert title_of([{"role": "user", "content": compose("", [Attachment("a.pdf", "x")])}]) == "a.pdf"
