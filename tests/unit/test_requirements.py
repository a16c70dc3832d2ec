"""requirements.txt allows only versions the code works with (checked against what is installed here)."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PAST_KEY_VALUES_REMOVED = Version("5.40.0")  # transformers' deprecate_kwarg("past_key_values", "5.40.0", "cache")


def requirement(name: str) -> Requirement:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text and Requirement(text).name == name:
            return Requirement(text)
    raise AssertionError(f"{name} is not in requirements.txt")


def test_transformers_is_bounded_below_the_release_that_removes_past_key_values() -> None:
    passes_it = [
        path.relative_to(ROOT)
        for path in (ROOT / "chatbot").rglob("*.py")
        if re.search(r"\bpast_key_values=", path.read_text(encoding="utf-8"))
    ]
    specifier = requirement("transformers").specifier
    if passes_it:
        assert PAST_KEY_VALUES_REMOVED not in specifier, f"{passes_it} pass past_key_values; bound it below 5.40"
    assert Version("6.0") not in specifier and Version("5.3") not in specifier  # only what the suite has run with
    assert Version(version("transformers")) in specifier, "the installed transformers is outside requirements.txt"
