"""The 16-bit key/value cache of CPU models: it keeps the FP32 cache's top-1 tokens over a long
context, conversation-cache reuse and batched rows give what a fresh lone request gets, and it holds
half the bytes. Nothing here measures speed.

Both models decode lone rows through the decode step's own attention (``QWEN_CPU_DECODE_STEP=eager``:
the compiled step's arithmetic, uncompiled, so no compiler time is spent here), prompts through
transformers' forward in 128-token chunks, as the engine feeds them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from chatbot.authoring.modelgen import SIZES, make_model
from chatbot.chat.prompt import build_prompt
from chatbot.engine.batching import decode_rows, install_row_attention
from chatbot.engine.engine import ChatEngine, Failed, Finished
from chatbot.engine.generation import PrefixCache
from chatbot.engine.kv_cache import cache_bytes, new_cache
from chatbot.engine.sampling import sampling_options
from chatbot.model.kv_attention import ATTENTION_NAME, choose_kv_cache_dtype, kv_cache_dtype
from chatbot.model.loader import load_model

CPU = torch.device("cpu")
CHUNK = 128  # the engine's CPU prefill chunk
# The 16-bit cache's logits stay within this fraction of the largest logit of the FP32 cache's, and its
# top-1 token is the FP32 one's at every step where that one leads the runner-up by more than twice the
# largest difference seen (closer calls are ties that rounding may break either way).
LOGIT_TOLERANCE = 2e-2
MIN_AGREEMENT = 0.95


def load(folder, **env: str):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QWEN_CPU_DECODE_STEP", "eager")
        patch.setenv("QWEN_CPU_DECODE_ROWS", "16")  # batched rows use the lone row's FP16 weights too
        for name, value in env.items():
            patch.setenv(name, value)
        loaded = load_model(str(folder), device="cpu", precision="fp16")
    install_row_attention(loaded.model)  # as the engine does
    return loaded


@pytest.fixture(scope="module")
def tiny(random_fp8):
    return load(random_fp8)


@pytest.fixture(scope="module")
def qwen3_shaped(tmp_path_factory):
    """Qwen3-0.6B's layers (hidden 1024, 16 query heads and 8 key/value heads of 128, MLP 3072), 4 of its
    28 and the tiny vocabulary: its attention exactly, in a model small enough for a shared CPU."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(SIZES, "0.6b-layers", {**SIZES["0.6b"], "num_hidden_layers": 4, "vocab_size": 512})
        folder = make_model(tmp_path_factory.mktemp("qwen3-0.6b-layers"), "0.6b-layers", seed=1)
    return load(folder)


def prefill(model, ids: list[int], cache) -> torch.Tensor:
    with torch.inference_mode():
        for start in range(0, len(ids), CHUNK):
            chunk = torch.tensor([ids[start : start + CHUNK]])
            logits = model(input_ids=chunk, cache=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
    return logits


def forced_reply(loaded, context: list[int], new_tokens: int, dtype, reply: list[int] | None = None):
    """Logits of each step of a greedy reply after ``context`` with the cache in ``dtype``; with ``reply``
    the steps are fed those tokens instead of their own picks. Returns (logits [steps, vocab], tokens)."""
    model = loaded.model
    cache = new_cache(model.config, dtype)
    steps = [prefill(model, context, cache)]
    tokens = []
    with torch.inference_mode():
        for index in range(new_tokens):
            tokens.append(int(steps[-1].argmax()) if reply is None else reply[index])
            steps.append(decode_rows(model, [tokens[-1]], [cache], CPU)[0])
    return torch.stack(steps), tokens


def check_top1(reference: torch.Tensor, ours: torch.Tensor) -> None:
    scale = float(reference.abs().max())
    error = float((ours - reference).abs().max()) / scale
    assert error <= LOGIT_TOLERANCE, error
    top2 = reference.topk(2, dim=-1).values
    margin = (top2[:, 0] - top2[:, 1]) / scale
    agree = reference.argmax(-1) == ours.argmax(-1)
    assert bool(agree[margin > 2 * error].all()), (margin[~agree], error)
    assert float(agree.float().mean()) >= MIN_AGREEMENT


def random_context(vocab: int, length: int, seed: int = 0) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_the_cpu_cache_is_16_bit_and_named_in_the_decision(tiny) -> None:
    decision = tiny.precision
    assert decision.kv_cache_dtype in ("bfloat16", "float16")
    assert kv_cache_dtype(tiny.model) == getattr(torch, decision.kv_cache_dtype)
    short = {"bfloat16": "BF16", "float16": "FP16"}[decision.kv_cache_dtype]
    assert f"key/value cache in {short}" in decision.reason  # the badge and /health show the reason
    assert decision.details["kv_cache_dtype"] == decision.kv_cache_dtype
    assert tiny.model.config._attn_implementation.endswith(ATTENTION_NAME)


def test_fp32_precision_or_the_variable_keep_an_fp32_cache(random_fp8) -> None:
    loaded = load_model(str(random_fp8), device="cpu", precision="fp32")
    assert loaded.precision.kv_cache_dtype == "float32"
    assert "key/value cache in FP32" in loaded.precision.reason
    forced = load(random_fp8, QWEN_KV_CACHE_DTYPE="fp32")
    assert forced.precision.kv_cache_dtype == "float32"


def test_the_16_bit_cache_holds_half_the_bytes(tiny) -> None:
    model = tiny.model
    ids = random_context(model.config.vocab_size, 300)
    caches = {dtype: new_cache(model.config, dtype) for dtype in (torch.float32, kv_cache_dtype(model))}
    for cache in caches.values():
        prefill(model, ids, cache)
    full, half = (cache_bytes(cache) for cache in caches.values())
    assert full > 0 and half * 2 == full


@pytest.mark.parametrize("model_name", ["tiny", "qwen3_shaped"])
def test_a_reply_over_a_long_context_keeps_the_fp32_caches_top1_tokens(model_name, request) -> None:
    """1,000 tokens of context (past the cache's third growth), then a 40-token greedy reply."""
    loaded = request.getfixturevalue(model_name)
    context = random_context(loaded.model.config.vocab_size, 1000)
    reference, reply = forced_reply(loaded, context, 40, torch.float32)
    ours, _ = forced_reply(loaded, context, 40, kv_cache_dtype(loaded.model), reply=reply)
    check_top1(reference, ours)


def test_batched_rows_read_the_16_bit_cache_as_a_lone_row_does(tiny) -> None:
    model, dtype = tiny.model, kv_cache_dtype(tiny.model)
    contexts = [random_context(model.config.vocab_size, length, seed) for seed, length in enumerate((700, 130, 333))]
    alone, together = [], [new_cache(model.config, dtype) for _ in contexts]
    for context, cache in zip(contexts, together, strict=True):
        prefill(model, context, cache)
    with torch.inference_mode():
        for context in contexts:
            cache = new_cache(model.config, dtype)
            prefill(model, context, cache)
            alone.append(decode_rows(model, [7], [cache], CPU)[0])
        batched = decode_rows(model, [7, 7, 7], together, CPU)
    check_top1(torch.stack(alone), batched)


def test_reusing_a_16_bit_conversation_cache_gives_a_fresh_prefills_tokens(tiny) -> None:
    """A long first turn, then a follow-up: the reply from the reused cache is the fresh prefill's."""
    prefix = PrefixCache(8192)
    history = [{"role": "user", "content": "Tell me about rabbits. " * 60}]

    def ids_of(messages):
        return build_prompt(tiny.tokenizer, messages, enable_thinking=False, max_context=8192, max_new_tokens=32).ids

    def reply(ids, cache):
        engine = ChatEngine.from_loaded(tiny, max_batch=1, prefix_cache_tokens=0)
        if cache is not None:
            engine.prefix_cache = cache
        try:
            events = list(engine.stream(ids, sampling_options(False, temperature=0, max_new_tokens=16)))
        finally:
            engine.close()
        assert not any(isinstance(e, Failed) for e in events), events
        return next(e.result for e in events if isinstance(e, Finished))

    first = reply(ids_of(history), prefix)
    follow_up = [*history, {"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
    ids = ids_of(follow_up)
    cached, fresh = reply(ids, prefix), reply(ids, None)
    assert cached.stats.cached_prompt_tokens > 300
    assert fresh.stats.cached_prompt_tokens == 0
    assert cached.token_ids == fresh.token_ids


ATTEND_AVX2 = """
import torch
from chatbot.model.kv_attention import attend
assert torch.backends.cpu.get_cpu_capability() == "AVX2"
generator = torch.Generator().manual_seed(0)
q = torch.randn(16, 128, generator=generator)
keys, values = (torch.randn(8, 1500, 128, generator=generator) for _ in range(2))
grouped = q.double().view(8, 2, 128)
scores = torch.softmax(grouped @ keys.double().transpose(1, 2) / 128**0.5, dim=-1)
reference = (scores @ values.double()).view(-1)
for dtype in (torch.float16, torch.bfloat16):
    out = attend(q, keys.to(dtype), values.to(dtype), 128**-0.5)
    print(dtype, float((out.double() - reference).abs().max()))
"""


def test_the_16_bit_attention_is_right_with_avx2_code() -> None:
    """The FP16 cache is the choice on CPUs without BF16, most of them AVX2: its attention runs right there."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run([sys.executable, "-c", ATTEND_AVX2], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = dict(line.rsplit(" ", 1) for line in done.stdout.strip().splitlines())
    assert float(errors["torch.float16"]) < 2e-3 and float(errors["torch.bfloat16"]) < 1e-2, errors


@pytest.mark.parametrize(
    ("mode", "flags", "isa", "environ", "expected"),
    [
        ("fp16", {"avx512_bf16"}, "AVX512", {}, torch.bfloat16),
        ("int8", {"amx_bf16"}, "AVX512", {}, torch.bfloat16),
        ("fp16", {"avx512_bf16"}, "AVX2", {}, torch.float16),  # BF16 flags, but AVX2 code
        ("fp16", {"avx2", "f16c"}, "AVX2", {}, torch.float16),
        ("fp32", {"avx512_bf16"}, "AVX512", {}, torch.float32),
        ("fp16", {"avx512_bf16"}, "AVX512", {"QWEN_KV_CACHE_DTYPE": "fp32"}, torch.float32),
        ("fp32", set(), "AVX2", {"QWEN_KV_CACHE_DTYPE": "bf16"}, torch.bfloat16),
        ("fp16", {"avx512_bf16"}, "AVX512", {"QWEN_KV_CACHE_DTYPE": "auto"}, torch.bfloat16),
    ],
)
def test_the_cache_dtype_rule(mode, flags, isa, environ, expected) -> None:
    choice = choose_kv_cache_dtype(mode, frozenset(flags), environ, isa)
    assert choice.dtype == expected and choice.describe().startswith(f"key/value cache in {choice.name.upper()}")


def test_an_unknown_cache_dtype_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="QWEN_KV_CACHE_DTYPE"):
        choose_kv_cache_dtype("fp16", frozenset(), {"QWEN_KV_CACHE_DTYPE": "int4"}, "AVX2")
