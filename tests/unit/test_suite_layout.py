"""The test suite's own layout: every test module lives in a tier folder, and no test module (or helper)
imports a test module or a conftest.py; what tests share lives in tests/helpers/ and the conftest.py files.

Pure text, no model: ``.venv/bin/python -m pytest tests/unit/test_suite_layout.py -q``.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
TIERS = {"unit", "engine", "app", "browser", "peers"}


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports (top-level names and ``from X import`` sources), anywhere in its body."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_every_test_module_is_in_a_tier_folder() -> None:
    misplaced = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("test_*.py")
        if path.relative_to(TESTS).parts[0] not in TIERS or len(path.relative_to(TESTS).parts) != 2
    ]
    assert not misplaced, f"move these into one of tests/{{{','.join(sorted(TIERS))}}}/: {misplaced}"


def test_no_module_imports_a_test_module_or_a_conftest() -> None:
    test_modules = {path.stem for path in TESTS.rglob("test_*.py")}
    offences = []
    for path in sorted(TESTS.rglob("*.py")):
        for name in imported_names(path):
            first = name.split(".")[0]
            if first in test_modules or first == "conftest" or first.startswith("test_"):
                offences.append(f"{path.relative_to(TESTS)} imports {name}")
    assert not offences, "share code through tests/helpers/ or a fixture in conftest.py instead: " + "; ".join(offences)


def test_this_check_sees_an_import_of_a_test_module(tmp_path: Path) -> None:
    module = tmp_path / "test_example.py"
    module.write_text("from test_browser import open_page\nimport conftest\nfrom helpers.app import ROOT\n")
    assert imported_names(module) == {"test_browser", "conftest", "helpers.app"}


def test_test_module_names_are_unique_across_tiers() -> None:
    """pytest imports test modules by their base name (no packages): two tiers' test_x.py stop collection."""
    names: dict[str, list[str]] = {}
    for path in TESTS.rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(TESTS)))
    assert not {name: paths for name, paths in names.items() if len(paths) > 1}
