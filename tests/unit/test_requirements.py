"""requirements.txt allows only versions the code works with (checked against what is installed here)."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
CACHE_ARGUMENT_ADDED = Version("5.24.0")  # transformers renamed `past_key_values` to `cache` (the old name warns)


def requirement(name: str) -> Requirement:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text and Requirement(text).name == name:
            return Requirement(text)
    raise AssertionError(f"{name} is not in requirements.txt")


def test_the_code_passes_transformers_cache_argument_and_requires_a_release_that_has_it() -> None:
    """The old name prints two deprecation warnings on a user's first reply and goes in 5.40."""
    old_name = [
        path.relative_to(ROOT)
        for path in (ROOT / "chatbot").rglob("*.py")
        if re.search(r"\bpast_key_values\b", path.read_text(encoding="utf-8"))
    ]
    assert old_name == [], f"{old_name} use past_key_values; pass cache= (transformers >= 5.24)"
    specifier = requirement("transformers").specifier
    assert CACHE_ARGUMENT_ADDED in specifier and Version("5.23.9") not in specifier
    assert Version("6.0") not in specifier and Version("5.3") not in specifier  # only what the suite has run with
    assert Version(version("transformers")) in specifier, "the installed transformers is outside requirements.txt"
