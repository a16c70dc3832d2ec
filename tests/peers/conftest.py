"""The peers tier's fixtures: llama.cpp, a real third-party engine, built once from PyPI's llama-cpp-python
sdist (``./start.sh test`` builds it before the tests; cached outside the repository), serving GGUF copies
of our generated checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def llamacpp():
    from chatbot.cli.llamacpp import LlamaCppError, ensure_built

    try:
        return ensure_built(log=lambda line: print(line, file=sys.stderr))
    except LlamaCppError as error:
        pytest.fail(f"llama.cpp is needed for this test and could not be built: {error}")


@pytest.fixture(scope="session")
def scripted_gguf(llamacpp, scripted_qwen3: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """GGUF F16 and Q8_0 copies of ``scripted_qwen3``, made by llama.cpp's converter and quantizer."""
    return llamacpp.convert(scripted_qwen3, tmp_path_factory.mktemp("gguf"))
