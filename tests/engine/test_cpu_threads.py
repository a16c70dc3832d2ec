"""One OpenMP team in the process: threads done with the model hand theirs back (engine/cpu_threads.py).

No speed is measured here: the tests check that a team is released and that the engine releases the
loading thread's team and its worker's when it idles.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from helpers.app import WAIT_LIMIT_SECONDS

from chatbot.engine import cpu_threads
from chatbot.engine import engine as engine_module
from chatbot.engine.engine import ChatEngine
from chatbot.engine.sampling import sampling_options


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux's /proc")
def test_releasing_hands_the_calling_threads_openmp_team_back() -> None:
    if cpu_threads._pause_all() is None:
        pytest.skip("PyTorch does not use libgomp here: nothing to release")
    counts = {}

    def work() -> None:
        torch.ones(4_000_000).add_(1).sum()  # large enough to run in parallel: this thread gets a team
        counts["with team"] = os_threads()
        counts["released"] = cpu_threads.release_openmp_team()
        counts["after"] = os_threads()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(WAIT_LIMIT_SECONDS)
    assert counts["released"]
    # The team's other threads end (none on one core: a team of one is the calling thread alone).
    assert counts["with team"] - counts["after"] == torch.get_num_threads() - 1


def test_the_engine_releases_the_loading_threads_team_and_its_worker_when_idle(random_fp8, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(engine_module, "release_openmp_team", lambda: calls.append(threading.current_thread().name))
    engine = ChatEngine(str(random_fp8), device="cpu", prefix_cache_tokens=0)
    engine.load()
    assert calls == [threading.current_thread().name]  # the thread that loaded
    (result,) = engine.run_batch([[1, 2, 3]], sampling_options(False, temperature=0, max_new_tokens=3))
    assert len(result.token_ids) == 3
    deadline = time.monotonic() + WAIT_LIMIT_SECONDS
    while "generation-worker" not in calls[1:] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "generation-worker" in calls[1:]  # idle again after the reply: its team goes too
    engine.run_on_this_thread([1, 2, 3], sampling_options(False, temperature=0, max_new_tokens=2))
    assert calls[-1] == threading.current_thread().name  # the bench's main-thread run releases its team too
    engine.close()
