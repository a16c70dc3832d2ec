"""The web chat's details in a real headless browser (Debian's Chromium driven by Playwright, offline):
↑ and "Edit last" keep the old answer as a version, and the page's fine print (issue 27).

.venv/bin/python -m pytest tests/browser/test_chat_details.py -q
"""

from __future__ import annotations

import pytest
from helpers.app import RunningApp
from helpers.browser import open_page, send, wait_for_stats


def chat_text(page) -> str:
    return page.inner_text("#qc-chat")


def box_holds(page, text: str) -> None:
    page.wait_for_function("(text) => document.querySelector('#qc-message textarea').value === text", arg=text)


@pytest.mark.parametrize("how", ["up arrow", "Edit last"])
def test_editing_the_last_message_keeps_the_old_answer_as_a_version(browser, demo_app: RunningApp, how) -> None:
    page = open_page(browser, demo_app)
    page.uncheck("#qc-thinking input")
    send(page, "First take")
    wait_for_stats(page, 1)
    page.wait_for_selector("#qc-send", state="visible")
    if how == "up arrow":
        page.focus("#qc-message textarea")
        page.keyboard.press("ArrowUp")
    else:
        page.click("#qc-edit")
    box_holds(page, "First take")
    send(page, "Second take")
    page.wait_for_selector("#qc-chat .qc-stats:has-text('question 2 of 2')")
    page.wait_for_selector("#qc-send", state="visible")
    assert "Second take" in chat_text(page) and "First take" not in chat_text(page)
    page.locator("#qc-chat .qc-step-prev").first.click()  # ‹: the first question and its answer are back
    page.wait_for_selector("#qc-chat .qc-stats:has-text('question 1 of 2')")
    assert "First take" in chat_text(page) and "Second take" not in chat_text(page)
    wait_for_stats(page, 1)
    assert not page.errors, page.errors
    page.context.close()


def test_prices_stay_text_and_gradio_has_no_second_settings(browser, demo_app: RunningApp, tmp_path) -> None:
    page = open_page(browser, demo_app)
    page.uncheck("#qc-thinking input")
    send(page, "Is $5 and $10 a fair price for $x^2$?")
    wait_for_stats(page, 1)
    user = page.locator("#qc-chat .message-row.user-row").first
    assert "$5 and $10" in user.inner_text()  # text, not math
    assert user.locator(".katex").count() == 1  # the real inline math still is
    footer = page.locator("footer")
    assert footer.get_by_text("Settings").count() == 0 and footer.get_by_text("Gradio").count() >= 1
    page.context.close()


def test_a_refused_first_message_leaves_no_chat_and_the_meter_follows_clear(browser, demo_app: RunningApp) -> None:
    page = open_page(browser, demo_app)
    page.fill("#qc-message textarea", "Summarize this:")
    page.wait_for_function("() => /[\\d,]+ \\//.test(document.querySelector('#qc-meter').innerText)")
    # Then text put in without a keystroke (as a paste or a drop is): the meter counts it before Send.
    page.fill("#qc-message textarea", "Summarize this: " + "word " * 50_000)  # far past the context: refused
    page.wait_for_function("() => document.querySelector('#qc-meter').innerText.includes('Shorten the message')")
    assert "oldest turns" not in page.inner_text("#qc-meter")
    page.click("#qc-send")
    page.wait_for_selector("#qc-notice .qc-notice")
    page.wait_for_timeout(1000)  # the record is written on change
    saved = page.evaluate("() => Object.keys(localStorage).filter((k) => k.startsWith('qwen3-chat:chat:')).length")
    assert saved == 0, "a ghost chat was kept"
    send(page, "Hello")
    wait_for_stats(page, 1)
    page.wait_for_selector("#qc-send", state="visible")
    page.wait_for_function("() => /[\\d,]+ \\//.test(document.querySelector('#qc-meter').innerText)")
    with_chat = page.inner_text("#qc-meter")
    page.click("text=✕ Clear")
    page.wait_for_function("(before) => document.querySelector('#qc-meter').innerText !== before", arg=with_chat)
    page.context.close()
