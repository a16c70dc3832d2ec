"""The web chat's message actions and room, in a real headless browser (Playwright + Debian's Chromium, offline):
Continue under a cut answer, deleting one message, Gradio's icons clear of the messages, version arrows that
keep the reader's place, the compact precision badge, and the phone layout (issue 27).

.venv/bin/python -m pytest tests/browser/test_chat_actions.py -q
"""

from __future__ import annotations

import json
import re

from helpers.app import RunningApp
from helpers.browser import open_page, open_settings, reload_page, send, set_slider, snap, wait_for_stats

LOG = "document.querySelector('#qc-chat .bubble-wrap')"
DESKTOP = {"width": 1366, "height": 850}
PHONE = {"width": 390, "height": 844}


def rect(page, selector: str) -> dict:
    return page.evaluate(
        "(s) => { const b = document.querySelector(s).getBoundingClientRect();"
        " return {top: b.top, bottom: b.bottom, left: b.left, right: b.right, height: b.height}; }",
        selector,
    )


def reply(page, text: str, count: int) -> None:
    send(page, text)
    wait_for_stats(page, count)
    page.wait_for_selector("#qc-send", state="visible")


def saved_messages(page) -> list[dict]:
    return page.evaluate(
        "() => JSON.parse(localStorage.getItem('qwen3-chat:chat:' + sessionStorage.getItem('qwen3-chat:current')))"
        ".messages"
    )


def test_continue_grows_an_answer_cut_at_max_tokens(browser, demo_app: RunningApp, tmp_path) -> None:
    page = open_page(browser, demo_app)
    open_settings(page)
    set_slider(page, "Max new tokens", 16)
    reply(page, "Tell me about yourself", 1)
    cut = wait_for_stats(page, 1, "cut at the max new tokens limit")
    assert "Continue" in cut and "checkpoint." not in page.inner_text("#qc-chat")
    snap(page, "screenshot-continue.png", tmp_path)  # docs/web-chat.md (QWEN_UPDATE_SCREENSHOT=1)
    page.click("#qc-chat .qc-continue")
    page.wait_for_function(
        "() => /tokens\\/s/.test([...document.querySelectorAll('#qc-chat .qc-stats')].pop().textContent)"
        " && !/cut at/.test([...document.querySelectorAll('#qc-chat .qc-stats')].pop().textContent)"
    )
    page.wait_for_selector("#qc-send", state="visible")
    assert "checkpoint." in page.inner_text("#qc-chat")  # the end of the scripted answer
    assert page.locator("#qc-chat .message-row.user-row").count() == 1  # the same message grew
    tokens = int(re.search(r"(\d+) tokens(?!/)", page.locator("#qc-chat .qc-stats").last.inner_text()).group(1))
    assert tokens > 16
    page.wait_for_timeout(800)  # saved on change
    assert saved_messages(page)[-1]["stats"]["new_tokens"] == tokens
    assert not page.errors, page.errors
    page.context.close()


def test_deleting_one_message_keeps_the_rest_and_the_meter_follows(browser, demo_app: RunningApp, tmp_path) -> None:
    page = open_page(browser, demo_app)
    page.uncheck("#qc-thinking input")
    reply(page, "First question", 1)
    reply(page, "Second question", 2)
    page.wait_for_function("() => /[\\d,]+ \\//.test(document.querySelector('#qc-meter').innerText)")
    meter = page.inner_text("#qc-meter")
    first_answer = page.locator("#qc-chat .message-row.bot-row").first
    first_answer.hover()
    bar = page.locator("#qc-chat .message-buttons").nth(1)  # the bars follow the messages: question, answer...
    bar.locator(".qc-delete-message").hover()
    snap(page, "screenshot-delete.png", tmp_path, keep_mouse=True)  # docs/web-chat.md
    bar.locator(".qc-delete-message").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#qc-chat .message-row.bot-row').length === 2"
    )  # answer + stats
    assert page.locator("#qc-chat .message-row.user-row").count() == 2
    page.wait_for_function("(before) => document.querySelector('#qc-meter').innerText !== before", arg=meter)
    page.wait_for_timeout(800)
    assert [m["role"] for m in saved_messages(page)] == ["user", "user", "assistant"]
    assert not page.errors, page.errors
    page.context.close()


def test_gradio_icons_stay_clear_of_the_messages(browser, demo_app: RunningApp) -> None:
    page = open_page(browser, demo_app, viewport=DESKTOP)
    page.uncheck("#qc-thinking input")
    reply(page, "A first question long enough to reach the right edge of its bubble, where icons could sit " * 2, 1)
    for count in (2, 3):
        reply(page, "More", count)
    page.evaluate(f"() => {{ {LOG}.scrollTop = 40; }}")  # scrolled a little: the first message under the top edge
    icons, log = rect(page, "#qc-chat .top-panel"), rect(page, "#qc-chat .bubble-wrap")
    assert icons["bottom"] <= log["top"] + 1, f"Gradio's Clear/Copy icons lie over the messages: {icons} {log}"
    page.context.close()


def test_version_arrows_keep_the_readers_place(browser, demo_app: RunningApp) -> None:
    page = open_page(browser, demo_app, viewport=DESKTOP)
    page.uncheck("#qc-thinking input")
    reply(page, "Q1", 1)
    page.get_by_role("button", name="↻ Regenerate").click()
    page.wait_for_selector("#qc-chat .qc-stats:has-text('answer 2 of 2')")
    page.wait_for_selector("#qc-send", state="visible")
    for count, text in enumerate(("Q2", "Q3", "Q4"), start=2):
        reply(page, text, count)
    page.locator("#qc-chat .qc-step-prev").first.click()  # answer 1 of 2: its line had nothing after it
    page.wait_for_selector("#qc-chat .qc-stats:has-text('answer 1 of 2')")
    page.locator("#qc-chat .qc-step-next").first.click()  # answer 2 of 2: Q2-Q4 come back below the arrows
    page.wait_for_selector("#qc-chat .qc-stats:has-text('answer 2 of 2')")
    page.wait_for_function("() => document.querySelectorAll('#qc-chat .message-row.user-row').length === 4")
    page.wait_for_timeout(800)
    arrows, log = rect(page, "#qc-chat .qc-ver"), rect(page, "#qc-chat .bubble-wrap")
    assert log["top"] <= arrows["top"] and arrows["bottom"] <= log["bottom"], "the view jumped away from the arrows"
    page.context.close()


def test_the_badge_is_compact_and_opens_on_a_click(browser, demo_app: RunningApp) -> None:
    page = open_page(browser, demo_app, viewport=DESKTOP)
    badge = rect(page, "#qc-badge")
    assert badge["height"] <= 60, badge
    assert not page.is_visible("#qc-badge .qc-badge-reason")
    assert page.inner_text("#qc-badge .qc-badge-short")  # one short reason beside the mode
    assert rect(page, "#qc-chat")["height"] >= 0.55 * DESKTOP["height"]
    page.click("#qc-badge summary")
    page.wait_for_selector("#qc-badge .qc-badge-reason", state="visible")
    assert rect(page, "#qc-badge")["height"] == badge["height"]  # the details open over the page, not in it
    page.context.close()


def test_a_phone_gives_the_conversation_the_screen(browser, demo_app: RunningApp) -> None:
    page = open_page(browser, demo_app, viewport=PHONE)
    page.wait_for_timeout(800)  # the side panels close on a phone
    chat, box = rect(page, "#qc-chat"), rect(page, "#qc-message textarea")
    assert chat["height"] >= 0.6 * PHONE["height"], chat
    assert box["height"] <= 48, f"the composer's hint wraps: {box}"
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    assert rect(page, "#qc-composer")["bottom"] <= PHONE["height"]
    page.uncheck("#qc-thinking input")
    reply(page, "Hello from a phone", 1)
    assert json.dumps(saved_messages(page))  # it works as on a desktop
    page.context.close()


def test_edit_last_then_a_reload_or_another_chat_loses_nothing(browser, demo_app: RunningApp) -> None:
    """Edit last takes the last exchange out to be edited. A reload before sending resumes the edit (the edited
    text sent then becomes the question's new version, not a second question); the chat is saved with the
    exchange until then, so another chat opened meanwhile, or a reload after it, finds it whole."""
    page = open_page(browser, demo_app)
    page.uncheck("#qc-thinking input")
    reply(page, "An older chat", 1)
    page.click("#qc-new")
    page.wait_for_function("() => document.querySelectorAll('#qc-chat .message').length === 0")
    reply(page, "First question", 1)
    reply(page, "Second question", 2)
    page.click("#qc-edit")
    page.wait_for_function("() => document.querySelector('#qc-message textarea').value === 'Second question'")
    page.fill("#qc-message textarea", "Second question, edited")
    page.wait_for_timeout(1000)  # a save would have landed by now
    assert [m["content"] for m in saved_messages(page) if m["role"] == "user"] == ["First question", "Second question"]
    reload_page(page)
    page.wait_for_selector("#qc-chat .message.user:has-text('First question')")
    wait_for_stats(page, 1)
    page.wait_for_function("() => document.querySelector('#qc-message textarea').value === 'Second question, edited'")
    assert page.locator("#qc-chat .message.user").count() == 1  # still being edited, as before the reload
    assert "You were editing your last message" in page.inner_text("#qc-notice")  # and the page says so
    page.press("#qc-message textarea", "Enter")
    stats = wait_for_stats(page, 2)
    assert "question 2 of 2" in stats  # the edit is a version of the question, the old exchange kept
    users = [m for m in saved_messages(page) if m["role"] == "user"]
    assert [v["content"] for v in users[1]["versions"]] == ["Second question", "Second question, edited"]

    page.click("#qc-edit")
    page.wait_for_function("() => document.querySelectorAll('#qc-chat .message.user').length === 1")
    page.locator("#qc-list label", has_text="An older chat").click()
    page.wait_for_selector("#qc-chat .message.user:has-text('An older chat')")
    page.locator("#qc-list label", has_text="First question").click()
    page.wait_for_selector("#qc-chat .message.user:has-text('Second question, edited')")
    reload_page(page)  # the edit was left with the chat: a reload shows the chat whole
    page.wait_for_selector("#qc-chat .message.user:has-text('Second question, edited')")
    assert page.locator("#qc-chat .message.user").count() == 2
    page.context.close()
