"""litellm against the running API: its exception classes and tool calls.

litellm (1.106, the newest the package index resolves here) pins ``openai<3`` while the suite uses
openai 3.x, so litellm gets a virtual environment of its own: made once by this test with
``pip install litellm==1.106.2 mcp==2.3.0`` (about a minute and 340 MB), kept in ``~/.cache/qwen3-chat-tests/``
(or ``$QWEN_TEST_CACHE``) and reused offline afterwards. ``tests/helpers/litellm_client.py`` runs in it as a
subprocess against the app and reports what litellm raised and read. Without a package index and
without that cache the tests are skipped, saying so.
Run: ``.venv/bin/python -m pytest tests/peers/test_api_litellm.py -q``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.app import ROOT, WAIT_LIMIT_SECONDS, RunningApp, running_app
from helpers.qwen3 import QWEN3_TOKENIZER_CACHE

# litellm 1.106.2's completion() imports the mcp package, which it does not declare.
PACKAGES = ("litellm==1.106.2", "mcp==2.3.0")
LITELLM_ENV = QWEN3_TOKENIZER_CACHE.parent / "litellm-1.106.2-venv"
KEY = "sk-litellm-test"
INSTALL_SECONDS = 900  # a bound for a slow mirror, not a measurement


def litellm_python(env: Path = LITELLM_ENV) -> Path:
    """The interpreter of litellm's own environment, made on first use (skips when it cannot be made)."""
    python = env / "bin" / "python"
    done = env / ".complete"  # written last, naming what was installed
    if done.exists() and done.read_text(encoding="utf-8") == " ".join(PACKAGES) and python.exists():
        return python
    partial = env.with_name(env.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(partial)], check=True, timeout=300)
    installed = subprocess.run(
        [str(partial / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PACKAGES],
        capture_output=True,
        text=True,
        timeout=INSTALL_SECONDS,
    )
    if installed.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        reason = installed.stderr.strip()[-300:]
        pytest.skip(f"cannot install {' '.join(PACKAGES)} into {env} (no package index?): {reason}")
    (partial / ".complete").write_text(" ".join(PACKAGES), encoding="utf-8")
    shutil.rmtree(env, ignore_errors=True)
    partial.rename(env)  # the interpreter finds its packages relative to itself: moving the folder is fine
    return python


@pytest.fixture(scope="module")
def keyed_app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    with running_app(
        ["--model", str(scripted_fp8), "--api-key", KEY], tmp_path_factory.mktemp("logs") / "litellm.log"
    ) as app:
        yield app


@pytest.fixture(scope="module")
def report(keyed_app: RunningApp) -> dict:
    """What litellm, in its own environment, made of three requests to the app."""
    python = litellm_python()
    ran = subprocess.run(
        [str(python), str(ROOT / "tests" / "helpers" / "litellm_client.py"), keyed_app.api_url + "/v1", KEY],
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT_SECONDS * 3,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    return json.loads(ran.stdout.strip().splitlines()[-1])


def test_a_wrong_key_is_an_authentication_error(report) -> None:
    assert "AuthenticationError" in report["wrong_key"]["raised"], report


def test_a_conversation_too_long_is_a_context_window_error(report) -> None:
    assert "ContextWindowExceededError" in report["too_long"]["raised"], report  # what litellm's fallbacks act on


def test_tool_calls_through_litellm(report) -> None:
    call = report["tool_call"]
    assert call["finish_reason"] == "tool_calls" and call["name"] == "get_weather"
    assert json.loads(call["arguments"])["city"] in {"Paris", "Tokyo"}
