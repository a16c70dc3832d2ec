"""Shared fixtures: generated checkpoints (made once per test session), the running apps several tiers
talk to, and the tier markers.

Everything runs offline on CPU: checkpoints come from ``chatbot.authoring.modelgen``, and the app is
started the way users start it (``python app.py ...``) on free local ports (``helpers.app``). Each
test is marked with its tier, the folder it lives in (``unit``, ``engine``, ``app``, ``browser``,
``peers``), so ``-m "not browser and not peers"`` is the fast lane (``./start.sh test --fast``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.app import RunningApp, free_port, running_app
from helpers.clients import openai_client
from helpers.qwen3 import fetch_qwen3_tokenizer

from chatbot.authoring.modelgen import make_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "engine", "app", "browser", "peers")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier: the folder under tests/ it lives in."""
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0]
        if tier in TIERS:
            item.add_marker(tier)


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


@pytest.fixture(scope="session")
def demo_app(scripted_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """The app on the scripted FP8 model (UI and API), shared by the tests that only talk to it."""
    with running_app(["--model", str(scripted_fp8)], tmp_path_factory.mktemp("logs") / "demo_app.log") as app:
        yield app


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
    return openai_client(api, validate=True)


@pytest.fixture(scope="session")
def scripted_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scripted FP8 model with Qwen3's real tokenizer and chat template (vocabulary 151,936)."""
    return make_model(tmp_path_factory.mktemp("scripted-qwen3"), scripted=True, tokenizer_dir=fetch_qwen3_tokenizer())


# ``--backend``: this app in front of a second copy of it (the app tier's test_remote.py and the browser tier's
# test_remote_browser.py).
@pytest.fixture(scope="module")
def remote_ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture(scope="module")
def remote(scripted_fp8: Path, remote_ports, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """The model server: this app on the scripted model (restarted on the same ports by one test)."""
    log_path = tmp_path_factory.mktemp("remote") / "remote.log"
    with running_app(["--model", str(scripted_fp8)], log_path, ports=remote_ports) as app:
        yield app  # stopped on the way out: the process running then (a test restarts it)


@pytest.fixture(scope="module")
def front(remote: RunningApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """This app in front of ``remote``: nothing loaded here."""
    args = ["--backend", remote.api_url + "/v1", "--backend-precision", "fp8"]
    with running_app(args, tmp_path_factory.mktemp("front") / "front.log") as app:
        yield app
