"""Files attached to a message and saved system prompts, in a real headless browser (Debian's Chromium driven
by Playwright, offline; issue 27).

.venv/bin/python -m pytest tests/browser/test_chat_files.py -q

Files reach the page the three ways people use: picked with the 📎 button, dropped on the page, pasted into
the message box (the last two as the browser's own drop and paste events carrying files).
"""

from __future__ import annotations

import base64

from helpers.app import WAIT_LIMIT_SECONDS, RunningApp
from helpers.browser import open_page, open_settings, reload_page, send, snap, wait_for_stats
from helpers.pdf import tiny_pdf

CHIPS = "#qc-attached .qc-chip"
SAVED_CHATS = "() => Object.keys(localStorage).filter((k) => k.startsWith('qwen3-chat:chat:'))"
# A file handed to the page the way a browser hands over a dropped or pasted one (an event carrying it).
HAND_OVER = """([how, name, type, data]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type }));
    if (how === "drop") {
        const chat = document.querySelector("#qc-chat");
        for (const kind of ["dragenter", "dragover", "drop"]) {
            chat.dispatchEvent(new DragEvent(kind, { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }
    } else {
        const box = document.querySelector("#qc-message textarea");
        box.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true }));
    }
}"""


def hand_over(page, how: str, name: str, mime: str, data: bytes) -> None:
    page.evaluate(HAND_OVER, [how, name, mime, base64.b64encode(data).decode()])


def pick(page, name: str, mime: str, data: bytes) -> None:
    page.set_input_files("#qc-composer input[type=file]", files=[{"name": name, "mimeType": mime, "buffer": data}])


def chips(page, count: int) -> list[str]:
    """The names on the chips of the files waiting for the message, once there are ``count``."""
    page.wait_for_function("([sel, n]) => document.querySelectorAll(sel).length === n", arg=[CHIPS, count])
    return [text.strip() for text in page.locator(CHIPS + " .qc-chip-name").all_inner_texts()]


def file_block(page, name: str):
    """The folded block of an attached file in the chat (its title, which opens it)."""
    return page.locator("#qc-chat .user-row .thought-group .title", has_text=name)


# The tokens the context meter counts now (NaN while it says something else).
METER = "parseInt((document.querySelector('#qc-meter .qc-meter') || {innerText: ''}).innerText.replace(/,/g, ''))"


def meter_tokens(page) -> int:
    page.wait_for_function(f"() => !isNaN({METER})")
    return page.evaluate(f"() => {METER}")


def test_files_picked_dropped_and_pasted_go_with_the_message_and_are_kept(
    browser, demo_app: RunningApp, tmp_path
) -> None:
    page = open_page(browser, demo_app)
    page.uncheck("#qc-thinking input")
    page.fill("#qc-message textarea", "Summarize these")
    page.type("#qc-message textarea", "!")
    before = meter_tokens(page)

    pick(page, "notes.md", "text/markdown", b"# Shopping\n\n- apples\n- pears\n")
    chips(page, 1)
    hand_over(page, "drop", "prices.csv", "text/csv", b"fruit,price\napples,3\npears,4\n")
    chips(page, 2)
    hand_over(page, "paste", "paper.pdf", "application/pdf", tiny_pdf(["Orchards of Normandy", "Cider in winter"]))
    assert chips(page, 3) == ["notes.md", "prices.csv", "paper.pdf"]
    page.wait_for_function(f"(before) => {METER} > before + 20", arg=before)  # the files are counted

    pick(page, "photo.png", "image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")  # refused, saying what is accepted
    page.wait_for_selector("#qc-notice .qc-notice")
    refusal = page.inner_text("#qc-notice")
    assert "photo.png" in refusal and ".md" in refusal and "PDF" in refusal
    pick(page, "extra.txt", "text/plain", b"taken off again")
    chips(page, 4)
    page.click("#qc-attached .qc-detach-3")  # its ×
    chips(page, 3)

    page.press("#qc-message textarea", "Enter")
    wait_for_stats(page, 1)
    chips(page, 0)  # sent with the message
    assert "Summarize these!" in page.inner_text("#qc-chat")
    for name in ("notes.md", "prices.csv", "paper.pdf"):
        assert file_block(page, name).count() == 1
    assert "Cider in winter" not in page.inner_text("#qc-chat")  # folded under its name
    file_block(page, "paper.pdf").click()
    page.wait_for_selector("#qc-chat :text('Cider in winter')")
    edits = page.locator("#qc-chat .user-row:has(.thought-group) + .message-buttons button[aria-label=Edit]")
    assert edits.count() == 3 and not any(edit.is_visible() for edit in edits.all())  # the question's own is
    record = page.evaluate(f"() => localStorage.getItem(({SAVED_CHATS})()[0])")
    assert '<file name=\\"paper.pdf\\"' in record and "Orchards of Normandy" in record

    reload_page(page)
    file_block(page, "prices.csv").wait_for()  # kept with the chat
    pick(page, "todo.txt", "text/plain", b"call the orchard")
    chips(page, 1)
    page.locator("#qc-chat .user-row").first.evaluate("(row) => row.scrollIntoView()")  # the question too
    snap(page, "screenshot-files.png", tmp_path)
    page.click("#qc-edit")  # Edit last: the question back in the box, its files back in their chips
    page.wait_for_function("() => document.querySelector('#qc-message textarea').value === 'Summarize these!'")
    assert chips(page, 4) == ["todo.txt", "notes.md", "prices.csv", "paper.pdf"]
    assert not page.errors, page.errors
    page.context.close()


def test_files_past_the_context_are_refused_before_the_model_and_nothing_is_lost(browser, demo_app) -> None:
    page = open_page(browser, demo_app)
    pick(page, "book.txt", "text/plain", ("word " * 50_000).encode())
    chips(page, 1)
    page.wait_for_function("() => document.querySelector('#qc-meter').innerText.includes('Shorten the message')")
    send(page, "What happens in the end?")
    page.wait_for_selector("#qc-notice .qc-notice")
    assert "context window" in page.inner_text("#qc-notice") and "attached files" in page.inner_text("#qc-notice")
    page.wait_for_function("() => document.querySelector('#qc-message textarea').value === 'What happens in the end?'")
    assert chips(page, 1) == ["book.txt"]  # still attached
    page.wait_for_timeout(1000)  # the record is written on change
    assert page.evaluate(f"() => ({SAVED_CHATS})().length") == 0
    assert page.locator("#qc-chat .message-row.user-row").count() == 0
    page.context.close()


# --- files waiting in the box survive a reload (the page keeps them beside the unsent text) -----------------


def box_is(page, text: str) -> None:
    page.wait_for_function("(text) => document.querySelector('#qc-message textarea').value === text", arg=text)


def sent_with(page, names: list[str]) -> None:
    """Send the message in the box; once answered, its files show in the chat and no chip is left."""
    page.press("#qc-message textarea", "Enter")
    wait_for_stats(page, 1)
    chips(page, 0)
    for name in names:
        assert file_block(page, name).count() == 1, name


def test_files_waiting_to_be_sent_survive_a_reload_and_go_with_the_message(browser, demo_app) -> None:
    page = open_page(browser, demo_app)
    page.uncheck("#qc-thinking input")
    pick(page, "notes.md", "text/markdown", b"# Shopping\n\n- apples\n")
    chips(page, 1)
    hand_over(page, "drop", "prices.csv", "text/csv", b"fruit,price\napples,3\n")
    chips(page, 2)
    page.fill("#qc-message textarea", "Compare them")
    reload_page(page)  # as the page does itself when the server comes back after a restart
    assert chips(page, 2) == ["notes.md", "prices.csv"]
    box_is(page, "Compare them")
    page.wait_for_selector("#qc-meter .qc-meter")  # the files are counted again
    sent_with(page, ["notes.md", "prices.csv"])
    reload_page(page)  # sent: the files are the message's now, none waits in the box again
    file_block(page, "prices.csv").wait_for()
    page.wait_for_timeout(1000)
    assert page.locator(CHIPS).count() == 0
    assert not page.errors, page.errors
    page.context.close()


def test_files_given_back_by_a_refused_message_survive_a_reload(browser, demo_app) -> None:
    page = open_page(browser, demo_app)
    page.uncheck("#qc-thinking input")
    pick(page, "book.txt", "text/plain", ("word " * 50_000).encode())
    chips(page, 1)
    pick(page, "notes.md", "text/markdown", b"# Shopping\n\n- pears\n")
    chips(page, 2)
    send(page, "What happens in the end?")  # too long for the context: refused, all given back
    page.wait_for_selector("#qc-notice .qc-notice")
    box_is(page, "What happens in the end?")
    chips(page, 2)
    reload_page(page)
    assert chips(page, 2) == ["book.txt", "notes.md"]
    box_is(page, "What happens in the end?")
    page.click("#qc-attached .qc-detach-0")  # the book off: the rest fits
    assert chips(page, 1) == ["notes.md"]
    sent_with(page, ["notes.md"])
    assert not page.errors, page.errors
    page.context.close()


def test_files_taken_back_by_edit_last_survive_a_reload(browser, demo_app) -> None:
    page = open_page(browser, demo_app)
    page.uncheck("#qc-thinking input")
    pick(page, "notes.md", "text/markdown", b"# Shopping\n\n- plums\n")
    chips(page, 1)
    page.fill("#qc-message textarea", "Summarize")
    sent_with(page, ["notes.md"])
    page.click("#qc-message textarea")
    page.keyboard.press("ArrowUp")  # Edit last: the question back in the box, its file back in its chip
    box_is(page, "Summarize")
    assert chips(page, 1) == ["notes.md"]
    page.wait_for_function("() => !document.querySelector('#qc-chat .user-row')")
    reload_page(page)
    assert chips(page, 1) == ["notes.md"]
    box_is(page, "Summarize")
    assert page.locator("#qc-chat .user-row").count() == 0  # the edit goes on after the reload
    sent_with(page, ["notes.md"])  # and, sent, is the question's new version: the old exchange is kept
    assert "question 2 of 2" in page.locator("#qc-chat .qc-stats").last.inner_text()
    assert not page.errors, page.errors
    page.context.close()


# The browser's storage made small for the waiting files (a real quota is a few MB per site, past what a test uploads).
SMALL_STORAGE = """(() => {
    const setItem = Storage.prototype.setItem;
    Storage.prototype.setItem = function (key, value) {
        if (key === "qwen3-chat:attached" && String(value).length > 20000) {
            throw new DOMException("The quota has been exceeded.", "QuotaExceededError");
        }
        return setItem.call(this, key, value);
    };
})()"""


def test_files_past_the_browsers_storage_are_named_not_dropped_simulated_small_quota(browser, demo_app) -> None:
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    context.set_default_timeout(WAIT_LIMIT_SECONDS * 1000)
    context.add_init_script(SMALL_STORAGE)
    page = open_page(browser, demo_app, context=context)
    page.uncheck("#qc-thinking input")
    pick(page, "notes.md", "text/markdown", b"# Shopping\n\n- figs\n")
    chips(page, 1)
    pick(page, "big.txt", "text/plain", ("many words " * 3_000).encode())
    chips(page, 2)
    page.wait_for_selector("#qc-notice :text('big.txt')")
    assert "Too large for this tab's storage" in page.inner_text("#qc-notice")
    reload_page(page)
    assert chips(page, 1) == ["notes.md"]  # the one that fit; the other is named, to attach again
    page.wait_for_selector("#qc-notice :text('Attach it again')")
    assert "big.txt" in page.inner_text("#qc-notice")
    sent_with(page, ["notes.md"])
    reload_page(page)  # said once: nothing is kept any more
    file_block(page, "notes.md").wait_for()
    page.wait_for_timeout(1000)
    assert "big.txt" not in page.inner_text("#qc-notice") and page.locator(CHIPS).count() == 0
    assert not page.errors, page.errors
    context.close()


# --- saved system prompts ---------------------------------------------------------------------------------

PROMPT_BOX = "#qc-sidebar textarea[placeholder^='e.g. You are']"


def prompt_is(page, text: str) -> None:
    page.wait_for_function("([sel, text]) => document.querySelector(sel).value === text", arg=[PROMPT_BOX, text])


def save_preset(page, name: str, prompt: str) -> None:
    page.fill(PROMPT_BOX, prompt)
    page.fill("#qc-preset-name input, #qc-preset-name textarea", name)
    page.click("#qc-preset-save")
    page.wait_for_function("(name) => document.querySelector('#qc-preset input').value === name", arg=name)


def choose_preset(page, name: str) -> None:
    page.click("#qc-preset input")
    page.click(f'#qc-preset li[role=option][aria-label="{name}"]')


def open_prompts(page) -> None:
    open_settings(page)
    if page.locator("#qc-preset").count() == 0 or not page.locator("#qc-preset").is_visible():
        page.click("#qc-prompts button.label-wrap, #qc-prompts .label-wrap")
    page.wait_for_selector("#qc-preset", state="visible")


def test_saved_prompts_are_picked_kept_per_browser_and_start_new_chats(browser, demo_app, tmp_path) -> None:
    page = open_page(browser, demo_app)
    open_prompts(page)
    save_preset(page, "Pirate", "Talk like a pirate.")
    save_preset(page, "Terse", "Answer in one word.")
    page.click("#qc-prompt-default")  # new chats start with the prompt shown: Terse's
    page.wait_for_selector("#qc-prompt-note:has-text('New chats start with: “Answer in one word.”')")
    choose_preset(page, "Pirate")
    prompt_is(page, "Talk like a pirate.")
    page.uncheck("#qc-thinking input")
    send(page, "Ahoy")
    wait_for_stats(page, 1)
    record = page.evaluate(f"() => JSON.parse(localStorage.getItem(({SAVED_CHATS})()[0]))")
    assert record["system_prompt"] == "Talk like a pirate."

    page.click("#qc-new")
    prompt_is(page, "Answer in one word.")  # the default, not the last chat's
    choose_preset(page, "Terse")
    snap(page, "screenshot-prompts.png", tmp_path)
    page.click("#qc-preset-delete")
    page.wait_for_function("() => document.querySelector('#qc-preset input').value === ''")

    second = open_page(browser, demo_app, context=page.context)  # another tab of this browser: a new chat
    open_prompts(second)
    prompt_is(second, "Answer in one word.")
    second.click("#qc-preset input")
    options = second.locator("#qc-preset li[role=option]")
    options.first.wait_for()
    assert [option.get_attribute("aria-label") for option in options.all()] == ["Pirate"]  # Terse was deleted
    assert not page.errors and not second.errors, page.errors + second.errors
    page.context.close()
