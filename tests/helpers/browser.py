"""Headless Chromium (Debian's, driven by Playwright, offline) and the page actions the browser tests share.

Chromium comes from the system (``CHROMIUM_PATH`` or ``chromium`` on PATH), not from Playwright; the
``browser`` fixture (``tests/browser/conftest.py``) skips, saying so, where there is none.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from helpers.app import ROOT, WAIT_LIMIT_SECONDS, RunningApp

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


def open_page(
    browser,
    app: RunningApp,
    requested: list[str] | None = None,
    login: tuple[str, str] | None = None,
    context=None,
    viewport: dict[str, int] | None = None,
):
    """A page on the app once the model is ready, in a fresh browser context (its own storage) unless given one.

    ``requested`` collects the URL of every request the page makes; ``login`` fills the login form.
    Script errors on the page are collected in ``page.errors``.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if context is None:
        context = browser.new_context(
            viewport=viewport or {"width": 1360, "height": 1000},
            device_scale_factor=1,
            permissions=["clipboard-read", "clipboard-write"],
        )
        context.set_default_timeout(WAIT_LIMIT_SECONDS * 1000)  # a bound for the slowest machine, not a measurement
    if requested is not None:
        context.on("request", lambda request: requested.append(request.url))
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.story = []  # what the page did, for the report of a failed test (tests/browser/conftest.py)
    started = time.monotonic()

    def note(what: str) -> None:
        page.story.append(f"{time.monotonic() - started:7.1f} s  {what}"[:300])
        del page.story[:-60]  # the last ones are the ones that tell

    page.on("console", lambda message: note(f"console {message.type}: {message.text}"))
    page.on("framenavigated", lambda frame: frame == page.main_frame and note(f"navigated to {frame.url}"))
    page.on("crash", lambda _: note("the page crashed"))
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
    # The tab's chat is restored (or a new one started) once its id is in the tab's sessionStorage.
    page.wait_for_function("() => sessionStorage.getItem('qwen3-chat:current')")
    return page


def page_report(browser, apps: list[RunningApp]) -> str:
    """What the open pages did and showed, and the apps' log tails: the report of a failed browser test."""
    lines = []
    for context in browser.contexts:
        for page in context.pages:
            lines.append(f"page {page.url}:")
            lines.extend(f"  {line}" for line in getattr(page, "story", []))
            try:
                shown = page.evaluate(
                    "() => ['#qc-send', '#qc-stop'].map(s => { const e = document.querySelector(s);"
                    " return s + (e ? (e.offsetParent ? ' shown' : ' hidden') : ' absent'); }).join(', ')"
                )
                lines.append(f"  now: {shown}; notice: {page.inner_text('#qc-notice', timeout=2000)[:300]!r}")
                stats = page.evaluate(
                    "() => [...document.querySelectorAll('#qc-chat .qc-stats')].map(s => s.innerText).slice(-3)"
                )
                lines.append(f"  last stats lines: {stats!r}")
                counts = page.evaluate(
                    "() => ['user', 'bot'].map(r => document.querySelectorAll(`#qc-chat .message.${r}`).length)"
                )
                box = page.input_value("#qc-message textarea", timeout=2000)
                lines.append(f"  messages (user, bot): {counts}; message box: {box[:200]!r}")
            except Exception as exc:  # a closed or crashed page: what it did above is the report
                lines.append(f"  (its state could not be read: {exc.__class__.__name__})")
    for app in apps:
        lines.append(f"log of the app on {app.ui_url} (last 4,000 characters):")
        lines.append(app.log()[-4000:])
    return "\n".join(lines)


def snap(page, name: str, tmp_path: Path, *, keep_mouse: bool = False) -> Path:
    """A screenshot: into assets/ with QWEN_UPDATE_SCREENSHOT=1 (the README shows them), else a temp folder.
    The mouse moves out of the way first unless ``keep_mouse`` (a hover the picture shows)."""
    folder = ROOT / "assets" if os.environ.get("QWEN_UPDATE_SCREENSHOT") == "1" else tmp_path
    if not keep_mouse:
        page.mouse.move(0, 0)
    target = folder / name
    page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000
    return target


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


def open_settings(page) -> None:
    """Open the settings panel (closed at first) with its toggle."""
    if page.locator("#qc-sidebar.open").count() == 0:
        page.click("#qc-sidebar > .toggle-button")
    page.wait_for_selector("#qc-sidebar.open")
    page.wait_for_timeout(400)  # the sliding animation


# What Gradio's script may log when a page is left (its event stream and heartbeat aborted), by timing.
LEAVING_NOISE = ("AbortError: signal is aborted", "Connection errored out")


def reload_page(page) -> None:
    """Reload the page; only the messages of leaving it (``LEAVING_NOISE``), and only from the reload itself,
    are dropped from ``page.errors``."""
    before = len(page.errors)
    page.reload()
    page.errors[before:] = [e for e in page.errors[before:] if not any(n in e for n in LEAVING_NOISE)]
