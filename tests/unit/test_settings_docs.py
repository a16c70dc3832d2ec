"""The manual's options table (README.md or a page under docs/) lists exactly the ``Settings`` fields, with
their flags, environment variables and defaults; ``serve`` accepts every one of them (pure, no model).
Run: ``.venv/bin/python -m pytest tests/unit/test_settings_docs.py -q``.
"""

from __future__ import annotations

import re
from pathlib import Path

from chatbot.cli.main import build_parser
from chatbot.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
HEADER = re.compile(r"^\|\s*flag\s*\|\s*variable\s*\|\s*default\s*\|", re.IGNORECASE)


def options_table() -> tuple[Path, list[list[str]]]:
    """The rows of the first "| flag | variable | default | ... |" table in README.md, else in docs/*.md."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if not page.is_file():
            continue
        lines = page.read_text(encoding="utf-8").splitlines()
        for start, line in enumerate(lines):
            if HEADER.match(line):
                rows = []
                for row in lines[start + 2 :]:
                    if not row.startswith("|"):
                        break
                    rows.append([cell.strip() for cell in row.strip().strip("|").split("|")])
                return page, rows
    raise AssertionError("no '| flag | variable | default | meaning |' table in README.md or docs/*.md")


def unquoted(cell: str) -> str:
    return cell.strip().strip("`")


def test_the_options_table_lists_every_setting_with_its_variable_and_default() -> None:
    page, rows = options_table()
    documented = {unquoted(row[0]): row for row in rows}
    expected = {"--" + name.replace("_", "-"): name for name in Settings.model_fields}
    assert set(documented) == set(expected), (
        f"{page.name}: missing {sorted(set(expected) - set(documented))}, "
        f"not settings {sorted(set(documented) - set(expected))}"
    )
    for flag, name in expected.items():
        row = documented[flag]
        assert unquoted(row[1]) == "QWEN_" + name.upper(), flag
        default = Settings.model_fields[name].default
        cell = row[2]
        if default is False:
            assert cell == "off", flag
        elif isinstance(default, bool):
            assert cell == "on", flag
        elif isinstance(default, int | float):
            # A number that stands for something ("0: half the queue") may be shown as what it stands for.
            stands_for = f"({default:g}: " in (Settings.model_fields[name].description or "")
            assert stands_for or f"`{default:g}`" in cell, (flag, cell)
        elif isinstance(default, str) and default:
            assert f"`{default}`" in cell, (flag, cell)


def test_serve_accepts_a_flag_for_every_setting() -> None:
    parser = build_parser()
    serve = next(
        action.choices["serve"]
        for action in parser._actions
        if getattr(action, "choices", None) and "serve" in action.choices
    )
    flags = {option for action in serve._actions for option in action.option_strings}
    missing = {"--" + name.replace("_", "-") for name in Settings.model_fields} - flags
    assert not missing, f"serve has no flag for {sorted(missing)}"
