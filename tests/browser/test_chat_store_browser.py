"""Where chats are kept, in a real headless browser: Markdown out and back in, and chats kept on the server.

.venv/bin/python -m pytest tests/browser/test_chat_store_browser.py -q

Without ``--auth`` the chats live in the browser, and "Export as Markdown" gives a file that reads as a
conversation and imports back, in another browser, as the same chat. With ``--auth`` they live on the
server: a second browser of the same login (a phone; or the same browser after clearing its site data)
finds them, another login finds none, and the page itself keeps no copy of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.app import RunningApp, running_app
from helpers.browser import open_page, send, snap, wait_for_stats

from chatbot.authoring.modelgen import SCRIPTED_ANSWER, SCRIPTED_THINKING

ALICE = ("alice", "alice-pw")
BOB = ("bob", "bob-pw")
SHOWN_ANSWER = "Start the app with"  # a plain piece of the scripted answer (the rest has Markdown in it)
assert SHOWN_ANSWER in SCRIPTED_ANSWER
KEPT_IN_THE_PAGE = "() => Object.keys(localStorage).filter((key) => key.startsWith('qwen3-chat:chat:')).length"


@pytest.fixture(scope="module")
def browser_app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """The scripted model without a login: chats kept in the browser."""
    with running_app(["--model", str(scripted_fp8)], tmp_path_factory.mktemp("md") / "app.log", api=False) as app:
        yield app


@pytest.fixture(scope="module")
def server_app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """The scripted model behind two logins: chats kept on the server."""
    folder = tmp_path_factory.mktemp("store")
    (folder / "logins").write_text(f"{':'.join(ALICE)}\n{':'.join(BOB)}\n", encoding="utf-8")
    args = ["--model", str(scripted_fp8), "--auth-file", str(folder / "logins")]
    with running_app(args, folder / "app.log", api=False) as app:
        yield app


def listed(page) -> list[str]:
    return [text.strip() for text in page.locator("#qc-list label").all_inner_texts()]


def test_markdown_export_reads_as_a_chat_and_imports_back_in_another_browser(
    browser, browser_app: RunningApp, tmp_path: Path
) -> None:
    page = open_page(browser, browser_app)
    assert page.inner_text("#qc-where") == "Chats kept in this browser"
    send(page, "Export me as Markdown")
    wait_for_stats(page, 1)
    page.wait_for_selector("#qc-send", state="visible")
    with page.expect_download() as download:
        page.click("#qc-export-md")
    assert download.value.suggested_filename.endswith(".md")
    text = Path(download.value.path()).read_text(encoding="utf-8")
    assert "# Export me as Markdown" in text and "### You\n\nExport me as Markdown" in text
    assert f"<details>\n<summary>Thinking</summary>\n\n{SCRIPTED_THINKING}\n\n</details>" in text
    assert SCRIPTED_ANSWER in text
    page.context.close()

    saved = tmp_path / "chat.md"
    saved.write_text(text, encoding="utf-8")
    fresh = open_page(browser, browser_app)  # another browser profile: nothing saved yet
    assert listed(fresh) == []
    fresh.set_input_files("#qc-chats input[type=file]", str(saved))
    fresh.wait_for_selector("#qc-chat .thought-group")  # the thinking is a thinking block again
    assert "Export me as Markdown" in fresh.inner_text("#qc-chat") and SHOWN_ANSWER in fresh.inner_text("#qc-chat")
    fresh.wait_for_selector("#qc-list label:has-text('Export me as Markdown')")
    assert fresh.evaluate(KEPT_IN_THE_PAGE) == 1  # kept in this browser
    fresh.context.close()


def test_a_second_browser_of_the_same_login_finds_the_chats_and_another_login_none(
    browser, server_app: RunningApp, tmp_path
) -> None:
    laptop = open_page(browser, server_app, login=ALICE)
    # Said where the reader sees it (the list's own label is only for screen readers).
    assert laptop.locator("#qc-where").is_visible()
    assert "on this server" in laptop.inner_text("#qc-where")
    send(laptop, "Asked on the laptop")
    wait_for_stats(laptop, 1)
    laptop.wait_for_selector("#qc-list label:has-text('Asked on the laptop')")
    assert laptop.evaluate(KEPT_IN_THE_PAGE) == 0  # the page keeps no copy: the server does

    # A fresh browser profile (a phone, or this browser after clearing its site data), same login.
    phone = open_page(browser, server_app, login=ALICE)
    phone.wait_for_selector("#qc-list label:has-text('Asked on the laptop')")
    phone.locator("#qc-list label", has_text="Asked on the laptop").click()
    phone.wait_for_selector(f"#qc-chat .message-row:has-text('{SHOWN_ANSWER}')")
    assert "Asked on the laptop" in phone.inner_text("#qc-chat")
    opened = phone.evaluate("() => sessionStorage.getItem('qwen3-chat:current')")
    phone.click("#qc-new")
    phone.wait_for_function("(opened) => sessionStorage.getItem('qwen3-chat:current') !== opened", arg=opened)
    send(phone, "Asked on the phone")
    wait_for_stats(phone, 1)
    phone.wait_for_selector("#qc-list label:has-text('Asked on the phone')")

    laptop.reload()
    laptop.wait_for_selector("#qc-list label:has-text('Asked on the phone')")
    assert "Asked on the laptop" in laptop.inner_text("#qc-chat")  # the tab's own chat is back after the reload
    snap(laptop, "screenshot-server-chats.png", tmp_path)  # docs/web-chat.md (QWEN_UPDATE_SCREENSHOT=1)
    laptop.fill("#qc-search textarea, #qc-search input", "phone")  # the server searches them
    laptop.wait_for_function("() => document.querySelectorAll('#qc-list label').length === 1")
    assert listed(laptop) == ["Asked on the phone"]

    other = open_page(browser, server_app, login=BOB)
    other.wait_for_timeout(1000)  # the list is drawn after the page's own chat is restored
    assert listed(other) == []
    for page in (laptop, phone, other):
        page.context.close()
