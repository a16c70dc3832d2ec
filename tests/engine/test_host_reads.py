"""At most one device-to-host read per generated token on the served path.

Every Python-level read of a tensor's values (``item``, ``tolist``, ``bool``/``int``/``float``/
``index`` of a tensor) is counted while the engine's worker serves replies of N and of 2N tokens; the
difference, over N, is the reads per generated token, prompt and setup excluded. On a GPU each read
waits for the device, so the decode step may make one (the picked tokens, with their finiteness flags).
Reads inside PyTorch's C++ code are not seen here (on the CPU they cost nothing).
"""

from __future__ import annotations

import threading

import pytest
import torch

from chatbot.engine.engine import ChatEngine
from chatbot.engine.sampling import sampling_options
from chatbot.model.loader import load_model

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture(scope="module")
def noisy(random_fp8):
    return load_model(str(random_fp8), device="cpu")


class ReadCounter:
    """Counts reads of tensor values made by the worker thread (the engine's, or the one measured)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.lock = threading.Lock()
        for name in READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(original))

    def _counted(self, original):
        def read(tensor, *args, **kwargs):
            with self.lock:
                self.count += 1
            return original(tensor, *args, **kwargs)

        return read


def reads_per_token(loaded, monkeypatch, streams: int = 1, **options) -> float:
    """Reads per generated token, from replies of 8 and 16 tokens (``streams`` at once)."""
    counter = ReadCounter(monkeypatch)
    engine = ChatEngine.from_loaded(loaded, max_batch=streams, prefix_cache_tokens=0)
    prompts = [loaded.tokenizer.encode(f"Question {i}: tell me more.") for i in range(streams)]
    counts = {}
    try:
        engine.run_batch(prompts, sampling_options(False, max_new_tokens=2, **options))  # warm-up
        for tokens in (8, 16):
            before = counter.count
            made = engine.run_batch(
                prompts, sampling_options(False, min_new_tokens=tokens, max_new_tokens=tokens, **options)
            )
            assert all(len(result.token_ids) == tokens for result in made)
            counts[tokens] = counter.count - before
    finally:
        engine.close()
    return (counts[16] - counts[8]) / (8 * streams)


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0},
        {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 3},
        {"temperature": 1.0, "repetition_penalty": 1.2, "presence_penalty": 0.5, "seed": 4},
        {"temperature": 0, "logprobs": True, "top_logprobs": 3, "logit_bias": {"15": 5.0}},
    ],
    ids=["greedy", "top-p/top-k/min-p", "penalties", "logprobs"],
)
def test_a_served_reply_reads_the_device_at_most_once_per_token(noisy, monkeypatch, options) -> None:
    assert reads_per_token(noisy, monkeypatch, **options) <= 1.0


def test_a_batched_step_reads_the_device_once_for_all_its_rows(noisy, monkeypatch) -> None:
    assert reads_per_token(noisy, monkeypatch, streams=3, temperature=0.7, seed=1) <= 1.0 / 3 + 1e-9
