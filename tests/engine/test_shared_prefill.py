"""The choices of one request (the API's ``n``) read their prompt once: the other choices copy the
first one's cache and pick from its last logits, and each seeded choice is the reply its seed gets alone.

Batch invariance (``QWEN_BATCH_INVARIANT=1``) makes rows decoded together run as alone, so replies can be
compared token for token. Nothing here measures speed.
"""

from __future__ import annotations

import pytest
from helpers.app import WAIT_LIMIT_SECONDS

from chatbot.chat.prompt import build_prompt
from chatbot.engine.engine import ChatEngine, Finished, TextDelta
from chatbot.engine.kv_cache import copy_prefix, new_cache
from chatbot.engine.sampling import sampling_options
from chatbot.engine.shared_prefill import SharedPrefill
from chatbot.model.loader import load_model

SEED = 1234
CHOICES = 3


@pytest.fixture(scope="module")
def noisy(random_fp8):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QWEN_BATCH_INVARIANT", "1")
        return load_model(str(random_fp8), device="cpu")


def prompt_ids(loaded) -> list[int]:
    messages = [{"role": "user", "content": "Write three different openings for a story about a lighthouse."}]
    return build_prompt(
        loaded.tokenizer, messages, enable_thinking=False, max_context=loaded.max_context, max_new_tokens=32
    ).ids


def finish(job):
    text = []
    while True:
        event = job.events.get(timeout=WAIT_LIMIT_SECONDS)
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, Finished):
            assert "".join(text) == event.result.text
            return event.result
        else:
            assert not hasattr(event, "error"), event


def options(index: int):
    return sampling_options(False, temperature=1.0, top_k=0, top_p=1.0, seed=SEED + index, max_new_tokens=24)


def test_choices_read_the_prompt_once_and_equal_their_seeds_alone(noisy) -> None:
    ids = prompt_ids(noisy)
    # A small prefill chunk: the prompt is read in several rounds, alone and shared alike.
    solo = ChatEngine.from_loaded(noisy, max_batch=1, prefix_cache_tokens=0, prefill_chunk=8)
    alone = [finish(solo.submit(ids, options(i))) for i in range(CHOICES)]
    solo.close()

    engine = ChatEngine.from_loaded(noisy, max_batch=4, prefix_cache_tokens=0, prefill_chunk=8)
    shared = SharedPrefill()
    jobs = [engine.submit(ids, options(i), client="one client", shared=shared) for i in range(CHOICES)]
    together = [finish(job) for job in jobs]
    engine.close()

    for index, (single, choice) in enumerate(zip(alone, together, strict=True)):
        assert choice.token_ids == single.token_ids, f"choice {index}"
        assert choice.text == single.text
    assert len({result.token_ids for result in together}) == CHOICES  # sampling with three seeds: three replies
    # One choice read the prompt; the others copied its cache.
    copied = [result.stats.cached_prompt_tokens for result in together]
    assert sorted(copied) == [0] + [len(ids)] * (CHOICES - 1), copied
    assert not shared.available  # the reader's cache went on (prefix cache or away): nothing holds it


def test_a_choice_that_starts_after_the_reader_ended_reads_the_prompt_itself(noisy) -> None:
    ids = prompt_ids(noisy)
    engine = ChatEngine.from_loaded(noisy, max_batch=1, prefix_cache_tokens=0)  # one at a time
    shared = SharedPrefill()
    jobs = [engine.submit(ids, options(i), shared=shared) for i in range(2)]
    first, second = (finish(job) for job in jobs)
    engine.close()
    assert first.stats.cached_prompt_tokens == second.stats.cached_prompt_tokens == 0
    solo = ChatEngine.from_loaded(noisy, max_batch=1, prefix_cache_tokens=0)
    assert finish(solo.submit(ids, options(1))).token_ids == second.token_ids
    solo.close()


def test_copy_prefix_copies_the_first_tokens_and_refuses_a_short_cache(noisy) -> None:
    import torch

    config = noisy.model.config
    cache = new_cache(config)
    ids = prompt_ids(noisy)
    with torch.inference_mode():
        noisy.model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
    copy = copy_prefix(cache, 5, config)
    assert copy is not None and copy.get_seq_length() == 5
    for source, target in zip(cache.layers, copy.layers, strict=True):
        assert torch.equal(target.keys, source.keys[..., :5, :])
        assert target.keys.data_ptr() != source.keys.data_ptr()  # a copy, not a view
    assert copy_prefix(cache, len(ids) + 1, config) is None
