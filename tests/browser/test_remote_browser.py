"""The web chat in headless Chromium, in front of a remote server (``--backend``): a second copy of this app.

What a person sees: the badge naming the remote server, thinking and answer streaming apart, Stop
ending the remote's generation (its engine logs the cancel), and a clear message while the remote
is gone, then chatting again once it is back.
Run: ``.venv/bin/python -m pytest tests/browser/test_remote_browser.py -q``.
"""

from __future__ import annotations

from helpers.app import RunningApp, start_app, stop_app
from helpers.browser import open_page, open_settings, send, set_slider, snap, wait_for_stats

from chatbot.authoring.modelgen import SCRIPTED_THINKING

LONG_REPLY_TOKENS = 4000


def test_badge_thinking_and_answer_over_the_remote(browser, front: RunningApp, remote: RunningApp, tmp_path) -> None:
    page = open_page(browser, front)
    badge = page.inner_text("#qc-badge")
    assert "remote" in badge and remote.api_url in badge and "fp8 (stated by the operator)" in badge
    send(page, "Hello! What are you?")
    page.wait_for_selector("#qc-chat .thought-group")
    stats = wait_for_stats(page, 1)
    assert "tokens/s" in stats
    assert page.locator("#qc-chat strong", has_text="demo model").count() == 1
    thought = page.locator("#qc-chat .thought-group").first
    thought.locator(".title").click()
    page.wait_for_function(
        "(text) => document.querySelector('#qc-chat').innerText.includes(text)", arg=SCRIPTED_THINKING
    )
    assert "</think>" not in page.inner_text("#qc-chat")
    snap(page, "screenshot-remote.png", tmp_path)  # README, Scaling out (QWEN_UPDATE_SCREENSHOT=1)
    page.context.close()


def test_stop_ends_the_remote_generation(browser, front: RunningApp, remote: RunningApp) -> None:
    before = len(remote.cancelled_generations())
    page = open_page(browser, front)
    open_settings(page)
    page.uncheck("#qc-thinking input")
    set_slider(page, "Max new tokens", LONG_REPLY_TOKENS)
    set_slider(page, "Min new tokens", LONG_REPLY_TOKENS)
    send(page, "Tell me a very long story.")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#qc-chat .message.bot')].some(m => m.innerText.length > 200)"
    )
    page.click("#qc-stop")
    wait_for_stats(page, 1, pattern="stopped")
    made, most = remote.next_cancelled_generation(before)
    assert most == LONG_REPLY_TOKENS and made < LONG_REPLY_TOKENS
    page.wait_for_selector("#qc-send", state="visible")
    page.context.close()


def test_the_page_says_when_the_remote_is_gone_and_chats_again_when_back(
    browser,
    front: RunningApp,
    remote: RunningApp,
    remote_ports,
    scripted_fp8,
) -> None:
    page = open_page(browser, front)
    stop_app(remote)
    send(page, "Are you there?")
    page.wait_for_selector("#qc-notice .qc-notice")
    assert "cannot be reached" in page.inner_text("#qc-notice")
    assert page.input_value("#qc-message textarea") == "Are you there?"  # the text is kept to send again
    page.wait_for_selector('#qc-badge [data-status="failed"]')  # the badge follows within seconds
    assert "unreachable" in page.inner_text("#qc-badge")

    back = start_app(["--model", str(scripted_fp8)], remote.log_path.with_name("remote-again.log"), ports=remote_ports)
    remote.process, remote.log_path = back.process, back.log_path
    page.wait_for_selector('#qc-badge [data-status="ready"]')  # the front's retries find it again
    page.press("#qc-message textarea", "Enter")
    wait_for_stats(page, 1)
    assert page.inner_text("#qc-notice").strip() == ""
    page.context.close()
