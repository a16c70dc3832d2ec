"""The compiled CPU decode step: transformers' arithmetic on the loaded model, chosen and checked at load.

Tiny models sit in the CPU caches, where the step is not used by default; ``QWEN_CPU_DECODE_STEP``
forces it on here. Nothing measures speed.
"""

from __future__ import annotations

import pytest
import torch

from chatbot.engine.engine import ChatEngine, Failed, Finished
from chatbot.engine.kv_cache import new_cache
from chatbot.engine.sampling import sampling_options
from chatbot.model.cpu_decode import CHECK_TOLERANCE, DOT_CHECK_TOLERANCE, requested_mode
from chatbot.model.cpu_layers import use_fp32_decode
from chatbot.model.loader import load_model


@pytest.fixture(scope="module")
def load_with(random_fp8, scripted_fp8):
    def load(step: str, precision: str = "fp16", model=random_fp8):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("QWEN_CPU_DECODE_STEP", step)
            return load_model(str(model), device="cpu", precision=precision)

    return load


def step_logits(loaded, prompt: list[int], tokens: list[int], fast: bool) -> list[torch.Tensor]:
    """Logits of each decode step after ``prompt``, through the compiled step or transformers' forward."""
    model, step = loaded.model, loaded.model.qwen_decode_step
    cache = new_cache(model.config)
    out = []
    with torch.inference_mode():
        model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True, logits_to_keep=1)
        for token in tokens:
            if fast:
                out.append(step([token], [cache])[0])
            else:
                ids = torch.tensor([[token]])
                out.append(model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1])
    return out


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_step_computes_what_transformers_computes(load_with, precision) -> None:
    loaded = load_with("compiled", precision)
    assert loaded.precision.details["decode_step"].startswith("compiled decode step")
    vocab = loaded.model.config.vocab_size
    prompt = [i % vocab for i in (9707, 11, 1879, 0, 358)]
    tokens = [i % vocab for i in (1079, 374, 264, 1273, 13, 220, 16, 17)]
    ours = step_logits(loaded, prompt, tokens, fast=True)
    theirs = step_logits(loaded, prompt, tokens, fast=False)
    for mine, reference in zip(ours, theirs, strict=True):  # the cache grows the same way, step after step
        assert float((mine - reference).abs().max() / reference.abs().max()) <= loaded.model.qwen_decode_step.tolerance
        assert int(mine.argmax()) == int(reference.argmax())


def test_the_step_attends_over_a_long_growing_cache_as_transformers_does(load_with) -> None:
    """Attention over views of the engine's cache, before and after it grows, as transformers computes it."""
    loaded = load_with("compiled")
    vocab = loaded.model.config.vocab_size
    prompt = [(7 * i + 3) % vocab for i in range(250)]  # the cache grows past its first 256 places below
    tokens = [(11 * i + 5) % vocab for i in range(12)]
    ours = step_logits(loaded, prompt, tokens, fast=True)
    theirs = step_logits(loaded, prompt, tokens, fast=False)
    for mine, reference in zip(ours, theirs, strict=True):
        assert float((mine - reference).abs().max() / reference.abs().max()) <= CHECK_TOLERANCE


AVX2_STEP = """
import sys, torch
from chatbot.engine.kv_cache import new_cache
from chatbot.model.loader import load_model
loaded = load_model(sys.argv[1], device="cpu", precision=sys.argv[2])
model = loaded.model
step = model.qwen_decode_step  # AttributeError (the test fails) when the step was refused
worst = 0.0
with torch.inference_mode():
    caches = [new_cache(model.config), new_cache(model.config)]
    for cache in caches:
        model(input_ids=torch.tensor([[5, 9, 13, 17, 21]]), cache=cache, use_cache=True, logits_to_keep=1)
    for token in (3, 8, 30, 60):
        mine = step([token], [caches[0]])[0]
        ids = torch.tensor([[token]])
        reference = model(input_ids=ids, cache=caches[1], use_cache=True, logits_to_keep=1).logits[0, -1]
        worst = max(worst, float((mine - reference).abs().max() / reference.abs().max()))
print(torch.backends.cpu.get_cpu_capability(), worst, step.tolerance, loaded.precision.details["decode_step"])
"""


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_with_avx2_code_the_step_is_used_and_right(random_fp8, precision) -> None:
    """torch 2.13's AVX2 code converts floats to FP16 wrongly (NaN logits) and Inductor cannot lower
    ``_weight_int8pack_mm`` with scales converted in the graph; the step works around both."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "QWEN_CPU_DECODE_STEP": "compiled"}
    command = [sys.executable, "-c", AVX2_STEP, str(random_fp8), precision]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    isa, worst, tolerance, details = done.stdout.split(maxsplit=3)
    assert isa == "AVX2" and details.startswith("compiled decode step")
    assert float(worst) <= float(tolerance) <= DOT_CHECK_TOLERANCE


def test_replies_and_the_conversation_cache_are_unchanged(load_with, scripted_fp8) -> None:
    """A reply through the engine, with a follow-up that reuses the cached conversation, is the same text."""
    replies = {}
    for step in ("compiled", "off"):
        loaded = load_with(step, "fp16", scripted_fp8)
        assert ("qwen_decode_step" in vars(loaded.model)) == (step == "compiled")
        engine = ChatEngine.from_loaded(loaded, max_batch=1)
        options = sampling_options(False, temperature=0, max_new_tokens=24)
        messages = [{"role": "user", "content": "Hello!"}]
        texts = []
        for _ in range(2):  # the second turn starts with the first: its prefill reuses the cached conversation
            ids = loaded.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            texts.append(_finished_text(engine.submit(ids, options)))
            messages += [{"role": "assistant", "content": texts[-1]}, {"role": "user", "content": "And again?"}]
        engine.close()
        replies[step] = texts
    assert replies["compiled"] == replies["off"]
    assert all(replies["compiled"])


def _finished_text(job) -> str:
    while True:
        event = job.events.get(timeout=120)
        if isinstance(event, Finished):
            return event.result.text
        assert not isinstance(event, Failed), event


def test_an_fp16_overflow_goes_back_to_transformers_fp32_decode(load_with) -> None:
    loaded = load_with("compiled")
    assert use_fp32_decode(loaded.model)
    assert not loaded.model.qwen_decode_step.enabled  # the recovery decodes in FP32 from the layers
    options = sampling_options(False, temperature=0, min_new_tokens=5, max_new_tokens=5)
    engine = ChatEngine.from_loaded(loaded, max_batch=1, prefix_cache_tokens=0)
    try:
        (result,) = engine.run_batch([[7, 11, 19]], options)
    finally:
        engine.close()
    assert len(result.token_ids) == 5


def test_small_models_keep_transformers_step_by_default_and_off_turns_it_off(load_with) -> None:
    auto = load_with("auto")
    assert "qwen_decode_step" not in vars(auto.model)
    assert "fits in the CPU caches" in auto.precision.details["decode_step"]
    off = load_with("off")
    assert "QWEN_CPU_DECODE_STEP=off" in off.precision.details["decode_step"]


def test_an_unknown_setting_says_what_to_use() -> None:
    assert requested_mode({}) == "auto"
    with pytest.raises(ValueError, match="QWEN_CPU_DECODE_STEP: input should be 'auto', 'compiled', 'eager' or 'off'"):
        requested_mode({"QWEN_CPU_DECODE_STEP": "fast"})
