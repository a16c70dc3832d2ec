"""Send racing a chat switch, in a real browser: a message sent just before "New chat" (or before another chat
is opened) stays in the chat it was sent in, with its reply, and the chat switched to stays as it was
(Playwright + Debian's Chromium, offline).

.venv/bin/python -m pytest tests/browser/test_chat_switching.py -q

The clicks come right after Enter, with no wait: before the reply has started, the moment a page's
events can race each other. The reply's own request is held back a moment in the page (``SLOW_REPLY``), as a
slow network or a busy server would: the click's request then reaches the server first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.app import WAIT_LIMIT_SECONDS, RunningApp, running_app
from helpers.browser import open_page, open_settings, send, set_slider, wait_for_stats

REPLY_TOKENS = 48  # short: each reply ends by itself within the test's bounded waits
# Installed before the page's own script: a request that joins Gradio's queue carrying the text in
# window.qcSlowReply (the reply's, which carries the message) is sent a second and a half late.
SLOW_REPLY = """(() => {
  const send = window.fetch.bind(window);
  window.fetch = async (url, init) => {
    const body = init && typeof init.body === "string" ? init.body : "";
    if (window.qcSlowReply && String(url).includes("queue/join") && body.includes(window.qcSlowReply)) {
      await new Promise((resolve) => setTimeout(resolve, 1500));
    }
    return send(url, init);
  };
})();"""


@pytest.fixture(scope="module")
def app(random_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    with running_app(["--model", str(random_fp8)], tmp_path_factory.mktemp("browser") / "switching.log") as app:
        yield app


@pytest.fixture(autouse=True)
def pages_closed(browser, app: RunningApp) -> Iterator[None]:
    """Every page closed after each test, also a failed one, and its replies ended."""
    yield
    for context in list(browser.contexts):
        context.close()
    app.wait_until_idle()


def slow_page(browser, app: RunningApp, slow_text: str):
    """A page whose reply requests carrying ``slow_text`` reach the server late (``SLOW_REPLY``)."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
    context.set_default_timeout(WAIT_LIMIT_SECONDS * 1000)
    context.add_init_script(SLOW_REPLY)
    page = open_page(browser, app, context=context)
    page.evaluate("(text) => { window.qcSlowReply = text; }", slow_text)
    return page


def short_replies(page) -> None:
    open_settings(page)
    page.uncheck("#qc-thinking input")
    set_slider(page, "Max new tokens", REPLY_TOKENS)
    set_slider(page, "Min new tokens", REPLY_TOKENS)


def saved_chats(page) -> dict[str, list[str]]:
    """The chats this browser keeps: {title: [each message's role]}."""
    return page.evaluate(
        """() => Object.fromEntries(qcStore.all().map((chat) => [chat.title, chat.messages.map((m) => m.role)]))"""
    )


def shown_questions(page) -> list[str]:
    """The questions drawn, in order."""
    return page.locator("#qc-chat .message.user").all_inner_texts()


def shown_text(page) -> str:
    return page.inner_text("#qc-chat")


def open_listed(page, title: str) -> None:
    page.locator("#qc-list label", has_text=title).click()
    page.wait_for_function("(t) => document.querySelector('#qc-chat').innerText.includes(t)", arg=title)


def settled(page, app: RunningApp, title: str) -> None:
    """The reply in the chat ``title`` has ended on the server, the page has written its last save (its stats no
    longer say "interrupted"), and the tab has moved to another chat (the switch's outputs have come: they carry
    the tab's chat id with the chat drawn).

    Not a fixed pause: a busy page can be seconds behind the server, and the switch can come before or after
    the reply's end."""
    app.wait_until_idle()
    page.wait_for_function(
        """(title) => qcStore.all().some((chat) => chat.title === title && chat.messages.length === 2
             && !JSON.stringify(chat.messages[1].stats || {}).includes("interrupted")
             && chat.id !== qcStore.current())""",
        arg=title,
    )


@pytest.mark.parametrize("wait_for", ["nothing", "the reply's first words"])
def test_new_chat_right_after_send_keeps_the_reply_in_the_chat_it_was_sent_in(browser, app, wait_for) -> None:
    question = f"Sent, then New chat ({wait_for[:10]})"
    page = slow_page(browser, app, question if wait_for == "nothing" else "(no request held back)")
    short_replies(page)
    send(page, question)
    if wait_for != "nothing":
        page.wait_for_selector("#qc-chat .message.bot")
    page.click("#qc-new")
    settled(page, app, question)

    assert question not in shown_text(page), "the message or its reply was drawn in the new chat"
    assert shown_questions(page) == []
    page.wait_for_selector("#qc-send", state="visible")  # the new chat has no reply running (drawn late on a busy core)
    assert page.input_value("#qc-message textarea") == ""
    assert saved_chats(page) == {question: ["user", "assistant"]}, "the new chat must stay empty (not kept)"
    current = page.evaluate("() => qcStore.current()")
    assert page.evaluate("(id) => qcStore.read(id)", current) is None, "the new chat was saved with messages"

    open_listed(page, question)  # the chat it was sent in has the question and the whole reply
    stats = wait_for_stats(page, 1)
    assert "interrupted" not in stats, f"the reply was not saved once it ended: {stats}"
    assert shown_questions(page) == [question]
    page.wait_for_selector("#qc-send", state="visible")

    page.click("#qc-new")  # and the new chat, once more, is empty: what was sent never comes into it
    page.wait_for_function("(t) => !document.querySelector('#qc-chat').innerText.includes(t)", arg=question)
    page.wait_for_timeout(1000)
    assert shown_questions(page) == []
    assert page.errors == []


def test_opening_another_chat_right_after_send_keeps_the_reply_in_the_chat_it_was_sent_in(browser, app) -> None:
    question = "Sent, then the older chat"
    page = slow_page(browser, app, question)
    short_replies(page)
    send(page, "An older chat")
    wait_for_stats(page, 1)
    page.wait_for_selector("#qc-send", state="visible")
    page.click("#qc-new")
    page.wait_for_function("() => !document.querySelector('#qc-chat').innerText.includes('An older chat')")
    page.wait_for_timeout(500)

    send(page, question)
    page.locator("#qc-list label", has_text="An older chat").click()
    settled(page, app, question)
    page.wait_for_function("() => document.querySelector('#qc-chat').innerText.includes('An older chat')")
    page.wait_for_timeout(500)  # anything else the switch or the reply would (wrongly) draw comes now

    assert shown_questions(page) == ["An older chat"], "the message or its reply was drawn in the chat opened"
    assert question not in shown_text(page)
    page.wait_for_selector("#qc-send", state="visible")
    assert saved_chats(page) == {"An older chat": ["user", "assistant"], question: ["user", "assistant"]}

    open_listed(page, question)
    stats = wait_for_stats(page, 1)
    assert "interrupted" not in stats, f"the reply was not saved once it ended: {stats}"
    assert shown_questions(page) == [question]
    open_listed(page, "An older chat")  # and the older chat is as it was
    page.wait_for_timeout(1000)
    assert shown_questions(page) == ["An older chat"]
    assert page.errors == []
