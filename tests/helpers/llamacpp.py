"""llama.cpp's ``llama-server``, a real third-party OpenAI-compatible server, on a GGUF: started and stopped.

The binaries come from the ``llamacpp`` fixture (``tests/peers/conftest.py``), built once and cached.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from helpers.app import WAIT_LIMIT_SECONDS, free_port, terminate


@dataclass
class LlamaServer:
    process: subprocess.Popen
    url: str  # the OpenAI-compatible base, ending in /v1
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.process)


def start_llama_server(llamacpp, gguf: Path, log_path: Path, *args: str) -> LlamaServer:
    """``llama-server -m GGUF ARGS`` on a free port, waiting until /health says it is ready."""
    port = free_port()
    command = [str(llamacpp.binary("llama-server")), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    log_file = log_path.open("w")
    process = subprocess.Popen([*command, *args], stdout=log_file, stderr=subprocess.STDOUT)
    server = LlamaServer(process, f"http://127.0.0.1:{port}/v1", log_path)
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama-server exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"llama-server did not become ready in {WAIT_LIMIT_SECONDS:.0f} s:\n{server.log()[-3000:]}")


@contextmanager
def running_llama_server(llamacpp, gguf: Path, log_path: Path, *args: str) -> Iterator[LlamaServer]:
    """``with running_llama_server(llamacpp, gguf, log, "--jinja") as server:`` ready, stopped on exit."""
    server = start_llama_server(llamacpp, gguf, log_path, *args)
    try:
        yield server
    finally:
        server.stop()
