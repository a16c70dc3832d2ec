"""The browser tier's fixtures: one headless Chromium per test module (``helpers.browser``), and a model
whose replies outlast the steps a test takes during them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.app import RunningApp
from helpers.browser import CHROMIUM, CHROMIUM_ARGS, page_report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed browser test's report carries what its pages did (navigations, console lines, Send/Stop
    shown, the notice) and its apps' log tails: a failure on a loaded CI machine explains itself."""
    report = yield
    if report.when == "call" and report.failed:
        arguments = getattr(item, "funcargs", {})
        browser = arguments.get("browser")
        if browser is not None:
            apps = [value for value in arguments.values() if isinstance(value, RunningApp)]
            report.sections.append(("pages and app logs", page_report(browser, apps)))
    return report


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


LONG_CONTEXT = 32768  # the loader's default context bound: "Max new tokens" then goes up to the server's cap, 16,384


@pytest.fixture(scope="session")
def long_context_fp8(random_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random model with a 32K context instead of 8K: a reply may then be 16,000 tokens (the server's cap).

    A test that acts during a reply (Stop, Esc, scrolling, another chat, a refused Send) needs the reply
    still running when its action lands. With 4,000 tokens (about 40 s here on one core) the one-core run
    of the suite failed as a reply that had already ended would: Stop gone before its click, a Send or a
    Regenerate not refused, an answer that stopped growing.
    """
    folder = tmp_path_factory.mktemp("long-context")
    shutil.copytree(random_fp8, folder, dirs_exist_ok=True)
    for name, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
        path = folder / name
        values = json.loads(path.read_text(encoding="utf-8"))
        values[key] = LONG_CONTEXT
        path.write_text(json.dumps(values, indent=2), encoding="utf-8")
    return folder
