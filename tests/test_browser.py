"""The web UI in a real headless browser: Debian's Chromium driven by Playwright, offline.

.venv/bin/python -m pytest tests/test_browser.py -q
QWEN_UPDATE_SCREENSHOT=1 .venv/bin/python -m pytest tests/test_browser.py -q   # also refresh assets/screenshot.png

A person's path through the page: type a message, watch the thinking block and the answer stream
in under the precision badge, reload and find the conversation again, log in and press Stop during
a long answer and go on chatting; and markup in messages (from the user or the model) never runs.
Chromium comes from the system (``CHROMIUM_PATH`` or ``chromium`` on PATH), not from Playwright.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import ROOT, WAIT_LIMIT_SECONDS, RunningApp, start_app, stop_app

from chatbot.authoring.modelgen import SCRIPTED_THINKING

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = ROOT / "assets" / "screenshot.png"
LONG_REPLY_TOKENS = 8000
LOGIN = ("tester", "s3cret")
XSS_PAYLOADS = '<img src=x onerror="window.__xss = 1"> <script>window.__xss = 2</script>'


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium, or set CHROMIUM_PATH")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def demo_app_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """``python app.py --demo``, its generated model kept in a test folder instead of ~/.cache."""
    folder = tmp_path_factory.mktemp("browser")
    app = start_app(["--demo"], folder / "demo.log", api=False, env={"XDG_CACHE_HOME": str(folder / "cache")})
    try:
        yield app
    finally:
        stop_app(app)


@pytest.fixture(scope="module")
def long_answer_app(random_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """The random model behind a login (long answers come from the "Min new tokens" control)."""
    app = start_app(
        ["--model", str(random_fp8), "--auth", ":".join(LOGIN)],
        tmp_path_factory.mktemp("browser") / "random.log",
        api=False,
    )
    try:
        yield app
    finally:
        stop_app(app)


def open_page(browser, app: RunningApp, requested: list[str] | None = None, login: tuple[str, str] | None = None):
    """A fresh browser context (its own storage, so its own session) on the app, once the model is ready.

    ``requested`` collects the URL of every request the page makes; ``login`` fills the login form.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    context = browser.new_context(viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
    if requested is not None:
        context.on("request", lambda request: requested.append(request.url))
    context.set_default_timeout(WAIT_LIMIT_SECONDS * 1000)  # a bound for the slowest machine, not a measurement
    page = context.new_page()
    page.goto(app.ui_url)
    if login is not None:
        page.fill("input[data-testid=textbox]", login[0])
        page.fill("input[data-testid=password]", login[1])
        page.get_by_role("button", name="Login").click()
    try:
        page.wait_for_selector('#qc-badge [data-status="ready"]')
    except PlaywrightTimeout as exc:
        badge = page.inner_text("#qc-badge")
        raise AssertionError(f"the badge never said ready: {badge}\n{app.log()[-3000:]}") from exc
    return page


def is_outside(url: str) -> bool:
    parts = urlparse(url)
    return parts.scheme not in ("data", "blob") and parts.hostname not in ("127.0.0.1", "localhost")


def send(page, text: str) -> None:
    page.fill("#qc-message textarea", text)
    page.press("#qc-message textarea", "Enter")


def set_slider(page, label: str, value: int) -> None:
    """Type into a slider's number box and wait until the slider itself has taken the value."""
    number = page.locator(f'#qc-sidebar input[aria-label="number input for {label}"]')
    number.fill(str(value))
    number.press("Enter")
    page.wait_for_function(
        '([label, value]) => document.querySelector(`#qc-sidebar input[aria-label="range slider for ${label}"]`)'
        ".value === value",
        arg=[label, str(value)],
    )


def wait_for_stats(page, count: int, pattern: str = r"tokens/s") -> str:
    """Wait until ``count`` stats lines match ``pattern`` (final stats have "tokens/s"); returns the last line."""
    page.wait_for_function(
        """([count, pattern]) => {
            const lines = [...document.querySelectorAll('#qc-chat .qc-stats')].filter(
                (line) => new RegExp(pattern).test(line.textContent));
            return lines.length >= count;
        }""",
        arg=[count, pattern],
    )
    return page.locator("#qc-chat .qc-stats").last.inner_text()


def test_chat_shows_thinking_answer_badge_and_survives_a_reload(browser, demo_app_ui: RunningApp, tmp_path) -> None:
    requested: list[str] = []
    page = open_page(browser, demo_app_ui, requested)
    badge = page.inner_text("#qc-badge")
    assert re.search(r"FP8 native|FP16 fallback|BF16|FP32", badge)
    assert "demo model, random weights" in badge and "weights" in badge

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

    page.reload()  # the conversation lives in this browser's storage
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


def test_markup_from_user_or_model_is_shown_but_never_runs(browser, demo_app_ui: RunningApp, tmp_path) -> None:
    page = open_page(browser, demo_app_ui)
    send(page, XSS_PAYLOADS)
    wait_for_stats(page, 1)
    # Model output takes the same path as an imported conversation's answers and thinking.
    imported = tmp_path / "hostile.json"
    hostile = [
        {"role": "user", "content": "show me"},
        {
            "role": "assistant",
            "content": XSS_PAYLOADS + "\n\n```html\n<b>code stays code</b>\n```",
            "thinking": XSS_PAYLOADS,
        },
    ]
    imported.write_text(json.dumps(hostile), encoding="utf-8")
    page.get_by_text("Conversation file").click()  # the accordion with Export and Import
    page.set_input_files("#qc-sidebar input[type=file]", str(imported))
    page.wait_for_selector("#qc-chat .thought-group")
    page.locator("#qc-chat .thought-group .title").first.click()
    page.wait_for_timeout(500)
    chat_text = page.inner_text("#qc-chat")
    assert chat_text.count('<img src=x onerror="window.__xss = 1">') >= 2  # shown as text, thinking included
    assert "<b>code stays code</b>" in chat_text
    assert page.locator("#qc-chat img[src='x']").count() == 0
    assert page.locator("#qc-chat script").count() == 0
    assert page.evaluate("window.__xss") is None
    page.context.close()


def test_login_then_stop_halts_a_long_answer_and_the_chat_goes_on(browser, long_answer_app: RunningApp) -> None:
    page = open_page(browser, long_answer_app, login=LOGIN)
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
