"""The web chat's state during a reply, in a real browser: scrolling, actions while a reply is written,
switching chats, Stop in the queue, reloads, a server outage (Playwright + Debian's Chromium, offline).

.venv/bin/python -m pytest tests/browser/test_chat_state.py -q

One app on the random model with one reply at a time (``--max-batch 1``), so replies queue behind each
other; long replies come from the "Min new tokens" control.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client
from helpers.app import WAIT_LIMIT_SECONDS, RunningApp, free_port, running_app, start_app, stop_app
from helpers.browser import open_page, open_settings, send, set_slider, wait_for_stats

LONG_REPLY_TOKENS = 16000  # within the server's cap (16,384) and the long-context model: still running when a test acts
LOG = "document.querySelector('#qc-chat .bubble-wrap')"
BUSY = "A reply is still being written"


@pytest.fixture(scope="module")
def one_at_a_time(long_context_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    with running_app(
        ["--model", str(long_context_fp8), "--max-batch", "1", "--queue-size", "4"],
        tmp_path_factory.mktemp("browser") / "state.log",  # with the API: its /health says when all is idle
    ) as app:
        yield app


@pytest.fixture(autouse=True)
def pages_closed(browser, one_at_a_time: RunningApp) -> Iterator[None]:
    """Every page closed after each test, also a failed one, and its replies ended (the next test's
    replies would otherwise queue behind them: one reply at a time)."""
    yield
    for context in list(browser.contexts):
        context.close()
    one_at_a_time.wait_until_idle()


def long_replies(page) -> None:
    open_settings(page)
    page.uncheck("#qc-thinking input")
    set_slider(page, "Max new tokens", LONG_REPLY_TOKENS)
    set_slider(page, "Min new tokens", LONG_REPLY_TOKENS)


def answer_length(page) -> int:
    return page.evaluate(
        "() => Math.max(0, ...[...document.querySelectorAll('#qc-chat .message.bot')].map(m => m.innerText.length))"
    )


def wait_for_answer(page, length: int) -> None:
    page.wait_for_function(
        "(n) => [...document.querySelectorAll('#qc-chat .message.bot')].some(m => m.innerText.length > n)", arg=length
    )


def tokens_in(stats: str) -> int:
    """The token count of a stats line ("… · 1109 tokens · …", not "… tokens/s")."""
    return int(re.search(r"(?<![\d.])(\d+) tokens?(?!/)", stats).group(1))


def restart_and_reconnect(page, app: RunningApp, args: list[str], ports: tuple[int, int], tmp_path: Path) -> None:
    """Start ``app`` again on its ports, and wait until the page has reconnected by itself (Gradio reloads it)."""
    page.evaluate("() => { window.qcBeforeTheRestart = true; }")
    app.process = start_app(args, tmp_path / "second.log", ports=ports).process
    page.wait_for_function(
        "() => !window.qcBeforeTheRestart && document.querySelector('#qc-badge [data-status=ready]')"
    )


def stop_and_wait(page) -> None:
    page.click("#qc-stop")
    page.wait_for_selector("#qc-send", state="visible")


def test_scrolling_up_during_a_reply_stays_put_and_jump_to_latest_follows_again(browser, one_at_a_time) -> None:
    page = open_page(browser, one_at_a_time)
    long_replies(page)
    send(page, "Write a long story")
    page.wait_for_function(f"() => {LOG}.scrollHeight > {LOG}.clientHeight * 2")  # grown past the screen
    page.hover("#qc-chat .message.bot")
    page.mouse.wheel(0, -600)  # the reader goes back to read
    page.wait_for_function(f"() => {LOG}.scrollHeight - {LOG}.scrollTop - {LOG}.clientHeight > 300")
    wait_for_answer(page, answer_length(page) + 100)  # the reply goes on growing (bounded wait, no fixed time)
    away = page.evaluate(f"() => {LOG}.scrollHeight - {LOG}.scrollTop - {LOG}.clientHeight")
    assert away > 300, f"the chat went back to the bottom while the reader read ({away} px from it)"
    page.click("#qc-jump")  # "Jump to latest": at the bottom, and following the reply again
    page.wait_for_selector("#qc-jump", state="hidden")
    grown = answer_length(page)
    wait_for_answer(page, grown + 200)
    # Following again: the view comes back to the bottom after each piece (a condition, not a time: on one busy
    # core a piece may land between the growth and the scroll that follows it).
    page.wait_for_function(f"() => {LOG}.scrollHeight - {LOG}.scrollTop - {LOG}.clientHeight < 80")
    wait_for_answer(page, answer_length(page) + 200)
    page.wait_for_function(f"() => {LOG}.scrollHeight - {LOG}.scrollTop - {LOG}.clientHeight < 80")
    stop_and_wait(page)
    page.context.close()


def test_a_touchpad_step_up_during_a_reply_is_not_undone(browser, one_at_a_time) -> None:
    """A touchpad (or a wheel's smooth scroll) moves a few pixels at a time: the first step up still leaves the
    view near the end, and must stop the following all the same."""
    page = open_page(browser, one_at_a_time)
    long_replies(page)
    send(page, "Write a long story")
    page.wait_for_function(f"() => {LOG}.scrollHeight > {LOG}.clientHeight * 2")
    page.hover("#qc-chat .message.bot")
    page.mouse.wheel(0, -15)
    # It goes on growing below the reader (by a little: a bounded wait, no fixed time).
    wait_for_answer(page, answer_length(page) + 100)
    away = page.evaluate(f"() => {LOG}.scrollHeight - {LOG}.scrollTop - {LOG}.clientHeight")
    assert away > 30, f"the chat went back to the bottom after a small step up ({away} px from it)"
    stop_and_wait(page)
    page.context.close()


def test_regenerate_send_and_edit_during_a_reply_say_why_and_stop_stays(browser, one_at_a_time) -> None:
    page = open_page(browser, one_at_a_time)
    long_replies(page)
    set_slider(page, "Max new tokens", 16)
    set_slider(page, "Min new tokens", 0)
    send(page, "A first short one")
    wait_for_stats(page, 1)
    page.wait_for_selector("#qc-send", state="visible")
    set_slider(page, "Max new tokens", LONG_REPLY_TOKENS)
    set_slider(page, "Min new tokens", LONG_REPLY_TOKENS)
    send(page, "Now a long one")
    wait_for_answer(page, 100)

    page.get_by_role("button", name="↻ Regenerate").click()
    page.wait_for_selector(f"#qc-notice:has-text('{BUSY}')")
    page.wait_for_timeout(1000)  # the event's last steps have run
    assert page.is_visible("#qc-stop") and not page.is_visible("#qc-send"), "Stop must stay while the reply grows"
    grown = answer_length(page)
    wait_for_answer(page, grown + 50)  # and the reply goes on

    send(page, "Sent while it writes")
    page.wait_for_selector("#qc-notice:has-text('your message stays in the box')")
    page.wait_for_timeout(1000)
    assert page.input_value("#qc-message textarea") == "Sent while it writes"  # kept, to send once it ends
    assert page.is_visible("#qc-stop")
    assert page.locator("#qc-chat .message.user", has_text="Sent while it writes").count() == 0

    stop_and_wait(page)
    page.press("#qc-message textarea", "Enter")  # now it goes
    page.wait_for_selector("#qc-chat .message.user:has-text('Sent while it writes')")
    page.wait_for_function("() => document.querySelector('#qc-message textarea').value === ''")
    stop_and_wait(page)
    page.context.close()


def test_regenerate_during_a_chats_first_reply_says_why_and_never_blanks_the_chat(browser, one_at_a_time) -> None:
    """The first reply of a chat is not in the tab's chat until it ends: Regenerate then said "no answer yet"
    and redrew the chat empty for a moment."""
    page = open_page(browser, one_at_a_time)
    long_replies(page)
    send(page, "The first message of this chat")
    wait_for_answer(page, 100)
    # The fewest questions the chat showed in any frame from here on.
    page.evaluate(
        """() => { const count = () => document.querySelectorAll('#qc-chat .message.user').length;
        window.qcFewest = count();
        const look = () => { window.qcFewest = Math.min(window.qcFewest, count());
            if (!window.qcLookDone) requestAnimationFrame(look); };
        requestAnimationFrame(look); }"""
    )
    page.get_by_role("button", name="↻ Regenerate").click()
    page.wait_for_selector(f"#qc-notice:has-text('{BUSY}')")
    wait_for_answer(page, answer_length(page) + 50)  # the reply goes on, drawn in the chat
    page.evaluate("() => { window.qcLookDone = true; }")
    assert page.evaluate("() => window.qcFewest") == 1, "the chat was drawn without its question"
    assert page.is_visible("#qc-stop") and not page.is_visible("#qc-send")
    stop_and_wait(page)
    page.context.close()


def test_opening_another_chat_mid_reply_keeps_it_writing_and_it_is_there_on_return(browser, one_at_a_time) -> None:
    page = open_page(browser, one_at_a_time)
    long_replies(page)
    send(page, "Keep writing while I look away")
    wait_for_answer(page, 200)
    page.click("#qc-new")
    page.wait_for_function("() => !document.querySelector('#qc-chat').innerText.includes('Keep writing')")
    page.wait_for_selector("#qc-send", state="visible")  # the new chat is free to use
    left_at = one_at_a_time.log().count("cancelled after")
    page.wait_for_timeout(2000)
    assert one_at_a_time.log().count("cancelled after") == left_at, "switching chats stopped the reply"

    page.locator("#qc-list label", has_text="Keep writing while I look away").click()
    page.wait_for_selector("#qc-stop", state="visible")  # still being written, and shown live again
    grown = answer_length(page)
    wait_for_answer(page, grown + 200)
    page.click("#qc-stop")
    stats = wait_for_stats(page, 1, pattern="stopped")
    assert one_at_a_time.cancelled_generations()[-1] == (tokens_in(stats), LONG_REPLY_TOKENS)
    page.context.close()


def test_stop_on_a_reply_queued_behind_others_cancels_at_once(browser, one_at_a_time) -> None:
    others = [Client(one_at_a_time.ui_url, verbose=False) for _ in range(2)]
    jobs = [
        client.submit(
            message="Busy",
            enable_thinking=False,
            max_new_tokens=LONG_REPLY_TOKENS,
            min_new_tokens=LONG_REPLY_TOKENS,
            api_name="/chat",
        )
        for client in others
    ]
    try:
        page = open_page(browser, one_at_a_time)
        long_replies(page)
        send(page, "Me after them")
        page.wait_for_selector("#qc-chat .qc-stats:has-text('In the queue: position 2')")
        page.wait_for_selector("#qc-list label:has-text('Me after them')")  # listed while it waits
        page.click("#qc-stop")
        page.wait_for_selector("#qc-notice:has-text('Stopped before the model started')", timeout=10_000)
        page.wait_for_selector("#qc-send", state="visible")
        assert page.input_value("#qc-message textarea") == "Me after them"
        assert page.locator("#qc-chat .message").count() == 0
        # The chat list at once too: the chat, empty again, leaves it, and nothing there says a reply runs.
        page.wait_for_selector("#qc-list label:has-text('Me after them')", state="detached", timeout=10_000)
        assert page.locator("#qc-chats [data-testid=status-tracker]:not(.hide)").count() == 0
        page.context.close()
    finally:
        for client in others:
            client.predict(api_name="/stop")
        for job in jobs:
            job.result(timeout=WAIT_LIMIT_SECONDS)


def test_reload_mid_reply_leaves_the_box_empty_and_counts_the_tokens_so_far(browser, one_at_a_time) -> None:
    page = open_page(browser, one_at_a_time)
    long_replies(page)
    send(page, "A question sent once")
    wait_for_answer(page, 300)
    page.wait_for_timeout(1200)  # saved twice a second while it streams
    page.reload()
    page.wait_for_selector("#qc-chat .qc-stats:has-text('interrupted')")
    page.wait_for_timeout(1000)  # the box's unsent text is restored by now
    assert page.input_value("#qc-message textarea") == ""
    stats = page.locator("#qc-chat .qc-stats").last.inner_text()
    assert tokens_in(stats) > 10, stats
    # its real figures as far as it got, not "0.00 s to first token · 0.0 tokens/s"
    speed = float(re.search(r"([\d.]+) tokens/s", stats).group(1))
    assert speed > 0 and re.search(r"[\d.]+ s to first token", stats), stats
    page.context.close()


def test_a_message_sent_while_the_server_is_down_is_back_in_the_box_when_it_returns(
    browser, scripted_fp8: Path, tmp_path: Path
) -> None:
    ports = (free_port(), free_port())
    args = ["--model", str(scripted_fp8)]
    with running_app(args, tmp_path / "first.log", ports=ports) as app:
        page = open_page(browser, app)
        page.uncheck("#qc-thinking input")
        stop_app(app)  # the server goes away (a restart, a crash)
        box = page.locator("#qc-message textarea")
        box.press_sequentially("Typed while the server was away")  # key by key, as a user types
        box.press("Enter")
        page.wait_for_timeout(3000)  # whatever the page tries meanwhile fails
        assert box.input_value() == "Typed while the server was away"
        restart_and_reconnect(page, app, args, ports, tmp_path)
        # The message is offered again, in the box.
        page.wait_for_function("() => sessionStorage.getItem('qwen3-chat:current')")
        page.wait_for_function(
            "() => document.querySelector('#qc-message textarea').value === 'Typed while the server was away'"
        )
        box.press("Enter")  # and it goes now
        page.wait_for_selector("#qc-chat .message.user:has-text('Typed while the server was away')")
        wait_for_stats(page, 1)
        assert box.input_value() == ""
        page.context.close()


def test_a_reply_cut_by_the_server_going_away_says_so_and_is_kept_when_it_returns(
    browser, long_context_fp8: Path, tmp_path: Path
) -> None:
    ports = (free_port(), free_port())
    args = ["--model", str(long_context_fp8)]
    with running_app(args, tmp_path / "first.log", ports=ports) as app:
        page = open_page(browser, app)
        long_replies(page)
        send(page, "A story the server will not finish")
        wait_for_answer(page, 300)
        page.wait_for_timeout(1200)  # saved twice a second while it streams
        stop_app(app)  # the server goes away mid-reply (a restart, a crash)
        # Not "Writing…" beside a Stop that can do nothing, nor a spinner in the chat list: the page says why.
        page.wait_for_selector("#qc-notice:has-text('The server cannot be reached')")
        assert "interrupted" in page.locator("#qc-chat .qc-stats").last.inner_text()
        assert not page.locator("#qc-stop").is_enabled()
        assert page.locator("#qc-chats [data-testid=status-tracker]:visible").count() == 0
        restart_and_reconnect(page, app, args, ports, tmp_path)
        # The reply is there as far as it got, marked interrupted.
        page.wait_for_selector("#qc-chat .qc-stats:has-text('interrupted')")
        stats = page.locator("#qc-chat .qc-stats").last.inner_text()
        assert tokens_in(stats) > 10, stats
        # the answer as far as its last save (twice a second; on a busy core that may be well before the stop)
        assert page.locator("#qc-chat .message.bot").nth(-2).inner_text().strip()
        page.wait_for_selector("#qc-send", state="visible")
        assert page.locator("#qc-notice .qc-notice").count() == 0  # the notice went with the outage
        page.context.close()
