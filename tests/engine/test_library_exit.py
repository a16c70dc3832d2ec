"""``Qwen3ChatBot`` in scripts: every script ends cleanly, a stream left early stops at once, Ctrl+C stops a reply.

Leaving a ``stream_chat`` loop with ``break``, or ending a script while a reply still generated, used to
abort the process at exit ("terminate called without an active exception", exit code 134): the engine's
daemon worker thread was inside torch when the interpreter finalized. The scripts below are the ones
users write; each runs RUNS times as a process of its own (``exit_runs.py`` forks the runs from one
process that did the imports, so a run costs about a second of CPU) and must exit as a script exits,
with nothing aborted, every time. The same for the remote backend (``backend=URL``), for Ctrl+C in a
script, and for Ctrl+C in the terminal chat (a real pseudo-terminal).
Run: ``.venv/bin/python -m pytest tests/test_library_exit.py -q``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.app import CANCELLED_LINE, ROOT, WAIT_LIMIT_SECONDS, RunningApp
from helpers.terminal import Terminal
from safetensors import safe_open
from safetensors.torch import save_file

from chatbot import AnswerDelta, ChatbotError, ChatDone, Qwen3ChatBot
from chatbot.engine.engine import ChatEngine
from chatbot.engine.scheduler import Batch

# Runs of each script. The defects these runs catch show in most runs (a worker inside torch at exit, a
# Ctrl+C that never raises); repeats guard against a rarer exit race. 8 runs of 12 scripts (a few CPU
# seconds each) keep the module within minutes on one busy core; 20 ran past half an hour on a loaded one.
RUNS = 8
TURNS = 10  # Ctrl+C presses in one terminal chat (one process: cheap)
ABORTED = "terminate called"
LONG = {"min_new_tokens": 3000, "max_new_tokens": 3000}  # far longer than any test waits for

PRELUDE = """
import logging, sys
from chatbot import AnswerDelta, Qwen3ChatBot
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # the engine's cancel line
LONG = dict(min_new_tokens=3000, max_new_tokens=3000)

def open_bot(**kwargs):
    where = sys.argv[1]
    if where.startswith("http"):
        return Qwen3ChatBot(backend=where, **kwargs)
    return Qwen3ChatBot(where, device="cpu", **kwargs)
"""

SCRIPTS = {
    "break_mid_stream": """
        bot = open_bot()
        for event in bot.stream_chat("Go on", **LONG):
            if isinstance(event, AnswerDelta):
                break
        print("end of script")
    """,
    "ends_while_generating": """
        bot = open_bot()
        stream = bot.stream_chat("Go on", **LONG)
        for event in stream:
            if isinstance(event, AnswerDelta):
                break
        print("end of script")  # `stream` is still referenced: its reply is still generating
    """,
    "response_format": """
        bot = open_bot()
        reply = bot.chat("A JSON object, please", response_format={"type": "json_object"}, max_new_tokens=16)
        print("end of script")
    """,
    "plain_chat": """
        bot = open_bot()
        bot.chat("Hello", max_new_tokens=8)
        bot.chat("Again", max_new_tokens=8)
        print("end of script")
    """,
    "background_loading": """
        bot = open_bot(load="background")
        print("end of script")
    """,
    "generate_batch": """
        bot = open_bot()
        bot.generate_batch(["One", "Two", "Three"], max_new_tokens=8)
        print("end of script")
    """,
    "ctrl_c_caught": """
        bot = open_bot()
        started = False
        try:
            for event in bot.stream_chat("Go on", **LONG):
                if isinstance(event, AnswerDelta) and not started:
                    started = True
                    print("generating", flush=True)  # the test presses Ctrl+C now
            print(f"the reply ended, no KeyboardInterrupt: {event.finish_reason} {event.stats}")  # for a failure
        except KeyboardInterrupt:
            print("end of script")
    """,
    "ctrl_c_uncaught": """
        bot = open_bot()
        started = False
        for event in bot.stream_chat("Go on", **LONG):
            if isinstance(event, AnswerDelta) and not started:
                started = True
                print("generating", flush=True)  # the test presses Ctrl+C now
        print(f"the reply ended, no KeyboardInterrupt: {event.finish_reason} {event.stats}")  # for a failure
    """,
}
CTRL_C = {"ctrl_c_caught", "ctrl_c_uncaught"}
# Scripts whose reply is stopped part-way: the local engine logs the cancel.
CANCELLING = {"break_mid_stream", "ends_while_generating", *CTRL_C}
LOCAL = list(SCRIPTS)
REMOTE = ["break_mid_stream", "ends_while_generating", "plain_chat", "ctrl_c_caught"]


def run_scripts(names: list[str], where: str, folder: Path) -> dict[str, list[dict]]:
    """Each script in ``names`` RUNS times (``exit_runs.py``), several at once; their exits and output."""
    folder.mkdir(parents=True, exist_ok=True)
    scripts = []
    for name in names:
        path = folder / f"{name}.py"
        path.write_text(PRELUDE + textwrap.dedent(SCRIPTS[name]), encoding="utf-8")
        interrupt = {"interrupt_on": "generating"} if name in CTRL_C else {}
        scripts.append({"name": name, "path": str(path), "args": [where], **interrupt})
    parallel = 2 * len(os.sched_getaffinity(0))
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"runs": RUNS, "parallel": parallel, "folder": str(folder), "scripts": scripts}))
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "helpers" / "exit_runs.py"), str(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30 * 60,  # a bound, not a measurement: 64 short runs on one busy core
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def check_runs(name: str, runs: list[dict], local: bool) -> None:
    assert len(runs) == RUNS
    for run in runs:
        stderr = run["stderr"]
        where = f"{name}, a run's stdout:\n{run['stdout'][-1000:]}\nits stderr:\n{stderr[-3000:]}"
        assert ABORTED not in stderr, where
        if name in CTRL_C:  # the test saw "generating" and sent SIGINT (else the run ended first)
            assert run["interrupted"], where
        if name == "ctrl_c_uncaught":  # Python's own ending for Ctrl+C: the traceback, then killed by SIGINT
            assert run["status"] == -signal.SIGINT, where
            assert "\nKeyboardInterrupt\n" in stderr, where
        else:
            assert run["status"] == 0, where
            assert "Traceback" not in stderr and "Exception ignored" not in stderr, where
            assert "end of script" in run["stdout"], where
        if local and name in CANCELLING:
            assert CANCELLED_LINE.search(stderr), where


@pytest.fixture(scope="module")
def local_runs(random_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    return run_scripts(LOCAL, str(random_fp8), tmp_path_factory.mktemp("local-runs"))


@pytest.fixture(scope="module")
def remote_runs(api: RunningApp, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    return run_scripts(REMOTE, api.api_url + "/v1", tmp_path_factory.mktemp("remote-runs"))


RUNS_TIMEOUT = pytest.mark.timeout(1800)  # the first test of each group runs all of its group's runs


@RUNS_TIMEOUT
@pytest.mark.parametrize("name", LOCAL)
def test_scripts_exit_cleanly_every_time(name: str, local_runs: dict[str, list[dict]]) -> None:
    check_runs(name, local_runs[name], local=True)


@RUNS_TIMEOUT
@pytest.mark.parametrize("name", REMOTE)
def test_scripts_over_a_remote_backend_exit_cleanly_every_time(name: str, remote_runs: dict[str, list[dict]]) -> None:
    check_runs(name, remote_runs[name], local=False)


# --- a stream left early, in this process -------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(random_fp8: Path):
    engine = ChatEngine(str(random_fp8), device="cpu")
    engine.load()
    yield engine
    engine.close()


class Rounds(logging.Handler):
    """Counts the engine's scheduling rounds and notes the round in which each cancel was logged."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.cancels: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if CANCELLED_LINE.search(record.getMessage()):
            self.cancels.append(self.count)

    def wait_for_cancel(self, seen: int = 0) -> int:
        deadline = time.monotonic() + WAIT_LIMIT_SECONDS
        while len(self.cancels) <= seen:
            assert time.monotonic() < deadline, "the engine never logged the cancel"
            time.sleep(0.01)
        return self.cancels[seen]


@pytest.fixture
def rounds(monkeypatch: pytest.MonkeyPatch):
    """The worker's rounds counted (a spy around ``Batch.round``) and its cancel lines caught."""
    handler = Rounds()
    original = Batch.round

    def counted(batch: Batch) -> None:
        handler.count += 1
        original(batch)

    monkeypatch.setattr(Batch, "round", counted)
    logger = logging.getLogger("chatbot.engine.scheduler")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def first_answer(stream) -> None:
    for event in stream:
        if isinstance(event, AnswerDelta):
            return


@pytest.mark.parametrize("how", ["break", "exception", "collected", "closed"])
def test_a_stream_left_early_is_cancelled_within_one_decode_step(how: str, engine: ChatEngine, rounds: Rounds) -> None:
    bot = Qwen3ChatBot(engine=engine)
    if how == "break":
        for event in bot.stream_chat("Go on", **LONG):
            if isinstance(event, AnswerDelta):
                break
    elif how == "exception":
        with pytest.raises(KeyError):
            for event in bot.stream_chat("Go on", **LONG):
                if isinstance(event, AnswerDelta):
                    raise KeyError("the caller's own error")
    else:
        stream = bot.stream_chat("Go on", **LONG)
        first_answer(stream)
        if how == "collected":
            del stream
        else:
            stream.close()
    left_in_round = rounds.count
    # The round running when the stream was left may finish; the next one ends the request.
    assert rounds.wait_for_cancel() <= left_in_round + 1
    assert bot.get_history() == []  # the unfinished exchange is not kept
    assert bot.chat("Short one", max_new_tokens=3)["finish_reason"] == "length"  # the bot is free again


def test_a_new_message_ends_a_stream_left_unfinished_in_the_same_thread(engine: ChatEngine, rounds: Rounds) -> None:
    bot = Qwen3ChatBot(engine=engine)
    stream = bot.stream_chat("Go on", **LONG)  # kept, but left: it would hold the bot forever
    first_answer(stream)
    reply = bot.chat("Short one", max_new_tokens=3)
    assert reply["finish_reason"] == "length"
    assert rounds.cancels  # the first reply was stopped, not run to its end
    assert [m["content"] for m in bot.get_history() if m["role"] == "user"] == ["Short one"]
    assert list(stream) == []  # the left stream is closed


def test_a_stream_left_early_over_a_remote_backend_is_cancelled_there(api: RunningApp) -> None:
    # Counted from /metrics: this module's script runs cancel more replies than the server logs a minute.
    before = api.replies_counted()
    with Qwen3ChatBot(backend=api.api_url + "/v1") as bot:
        for event in bot.stream_chat("Go on", **LONG):
            if isinstance(event, AnswerDelta):
                break
        deadline = time.monotonic() + WAIT_LIMIT_SECONDS
        while api.replies_counted().get("cancelled", 0) == before.get("cancelled", 0):
            assert time.monotonic() < deadline, "the remote server never cancelled the request"
            time.sleep(0.05)
    api.wait_until_idle()  # the generation stopped there...
    made = api.replies_counted()["tokens"] - before.get("tokens", 0)
    assert made < LONG["max_new_tokens"]  # ...long before its end


# --- close() and the with block ------------------------------------------------------------------------------


def test_the_with_block_stops_the_reply_and_the_worker(random_fp8: Path) -> None:
    with Qwen3ChatBot(str(random_fp8), device="cpu") as bot:
        stream = bot.stream_chat("Go on", **LONG)
        first_answer(stream)
        worker = bot.engine._worker
    assert worker is not None and not worker.is_alive()
    events = list(stream)  # what was generated before the close, then the end
    assert isinstance(events[-1], ChatDone) and events[-1].finish_reason == "cancelled"
    with pytest.raises(ChatbotError, match="closed"):
        bot.chat("Again")
    bot.close()  # twice is fine


def test_close_leaves_an_engine_passed_in_open(engine: ChatEngine) -> None:
    Qwen3ChatBot(engine=engine).close()
    assert Qwen3ChatBot(engine=engine).chat("Hello", max_new_tokens=3)["finish_reason"] == "length"


def test_closing_during_a_background_load_stops_it(random_fp8: Path) -> None:
    engine = ChatEngine(str(random_fp8), device="cpu")
    engine.start_loading()
    engine.close()
    assert not engine._load_thread.is_alive()
    if engine.loaded is None:  # stopped part-way (else it had finished already)
        assert "closed" in str(engine.load_error)
    with pytest.raises(ChatbotError):
        Qwen3ChatBot(engine=engine).chat("Hello", max_new_tokens=3)


# --- Ctrl+C in the terminal chat ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endless_fp8(random_fp8: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random model, except that it never ends a reply: its end-of-turn tokens' embeddings (tied to the
    output head) are zero, so their logit is 0, far below the top 20 that sampling keeps."""
    folder = tmp_path_factory.mktemp("endless")
    shutil.copytree(random_fp8, folder, dirs_exist_ok=True)
    config = json.loads((folder / "generation_config.json").read_text())
    ends = set(config["eos_token_id"]) | {json.loads((folder / "config.json").read_text())["eos_token_id"]}
    vocab = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    ends |= {token["id"] for token in vocab if token["content"] in ("<|im_end|>", "<|endoftext|>")}
    path = folder / "model.safetensors"
    with safe_open(str(path), "pt") as weights:
        tensors = {name: weights.get_tensor(name) for name in weights.keys()}  # noqa: SIM118
        metadata = weights.metadata()
    tensors["model.embed_tokens.weight"][sorted(ends)] = 0
    save_file(tensors, str(path), metadata=metadata)
    return folder


def test_ctrl_c_in_the_terminal_chat_stops_the_reply_and_the_prompt_comes_back(endless_fp8: Path) -> None:
    command = ["-m", "chatbot", "chat", "--model", str(endless_fp8), "--device", "cpu", "--log-level", "info"]
    chat = Terminal([sys.executable, *command])
    try:
        at = chat.expect("you> ", 0)
        for turn in range(TURNS):
            chat.type(f"Tell me a long story, part {turn}\r")
            at = chat.expect("thinking:", at)  # the reply streams (it would never end by itself)
            chat.type("\x03")
            at = chat.expect("(stopped)", at)
            at = chat.expect("you> ", at)
        chat.type("/quit\r")
    finally:
        status = chat.close()
    assert status == 0, chat.output[-3000:]
    assert ABORTED not in chat.output and "Traceback" not in chat.output
    assert len(CANCELLED_LINE.findall(chat.output)) == TURNS  # each reply was stopped in the engine
