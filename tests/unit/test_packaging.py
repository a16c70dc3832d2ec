"""``pip install .`` ships every layer, the page's files and the ``qwen3-chat`` command (pure: reads
pyproject.toml, builds nothing).
Run: ``.venv/bin/python -m pytest tests/unit/test_packaging.py -q``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_of_the_source_tree_is_shipped() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "chatbot").rglob("__init__.py")}
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages"
    assert {"chatbot.data", "chatbot.assets"} <= listed


def test_the_page_files_the_ui_reads_are_shipped() -> None:
    shipped = PYPROJECT["tool"]["setuptools"]["package-data"]["chatbot.assets"]
    ui = (ROOT / "chatbot" / "serve" / "ui.py").read_text(encoding="utf-8")
    for name in shipped:
        assert (ROOT / "assets" / name).is_file()
    for name in ("chat.js", "style.css", "logo.svg"):
        assert name in ui and name in shipped


def test_the_console_script_and_dependencies() -> None:
    assert PYPROJECT["project"]["scripts"]["qwen3-chat"] == "chatbot.cli.main:main"
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
