"""The CPU decode attention kernel: every instruction set this CPU runs against an FP64 reference, on BF16,
FP16 and FP32 caches as the cache stores them (a slice of a larger buffer), Qwen3's head shapes and others,
peaked and flat softmaxes; its use by ``attend`` once a model is loaded; the fallbacks with their reasons."""

from __future__ import annotations

import pytest
import torch

from chatbot.model import cpu_attention, kv_attention
from chatbot.model.cpu_attention import reference
from chatbot.model.cpu_int8_dot import KernelBuildError


def isas() -> list[str]:
    try:
        load = cpu_attention.chosen_isa({})
    except KernelBuildError as exc:
        pytest.skip(f"the kernel cannot be built here: {exc}")
    return [name for name in cpu_attention.ISAS if name == load or name == "avx2"]


def cache_like(kv_heads: int, length: int, dim: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Keys or values as the cache hands them: the first ``length`` positions of a larger buffer."""
    return torch.randn(kv_heads, length + 7, dim, generator=generator).to(dtype)[:, :length]


# (query heads, key/value heads, head size): Qwen3-0.6B/1.7B (2 query rows per kv head, the AVX-512 path
# written for 128), one row per head, Qwen3-4B/8B's 4 rows (the general loops), and another head size.
SHAPES = [(16, 8, 128), (8, 8, 128), (32, 8, 128), (4, 1, 64)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_kernel_matches_fp64_on_every_instruction_set(dtype, shape) -> None:
    heads, kv_heads, dim = shape
    generator = torch.Generator().manual_seed(heads * dim)
    for isa in isas():
        kernel = cpu_attention.decode_kernel(isa)
        for length in (1, 17, 1500):
            keys, values = (cache_like(kv_heads, length, dim, dtype, generator) for _ in range(2))
            for spread in (1.0, 30.0):  # a flat softmax and one that a few positions dominate
                q = torch.randn(heads, dim, generator=generator) * spread
                expected = reference(q, keys, values, dim**-0.5)
                out = kernel(q, keys, values, dim**-0.5)
                assert out.shape == (heads, dim) and out.dtype == torch.float32
                error = ((out.double() - expected).abs().max() / expected.abs().max()).item()
                assert error < 1e-4, (isa, length, spread, error)


def test_the_kernel_is_more_precise_than_rounding_the_query_to_16_bits() -> None:
    """SDPA over a 16-bit cache rounds the query to the cache's dtype; the kernel keeps it in FP32."""
    generator = torch.Generator().manual_seed(1)
    keys, values = (cache_like(8, 700, 128, torch.bfloat16, generator) for _ in range(2))
    q = torch.randn(16, 128, generator=generator)
    expected = reference(q, keys, values, 128**-0.5)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q.to(torch.bfloat16).view(1, 8, 2, 128), keys[None], values[None], scale=128**-0.5
    ).view(16, 128)
    kernel = cpu_attention.decode_kernel(isas()[0])(q, keys, values, 128**-0.5)
    assert (kernel.double() - expected).abs().max() < (sdpa.double() - expected).abs().max() / 10


def test_the_kernel_refuses_what_it_cannot_read() -> None:
    kernel = cpu_attention.decode_kernel(isas()[0])
    q = torch.randn(16, 128)
    with pytest.raises(RuntimeError, match="query heads"):
        kernel(torch.randn(12, 128), torch.randn(8, 4, 128), torch.randn(8, 4, 128), 0.1)
    with pytest.raises(RuntimeError, match="contiguous"):
        keys = torch.randn(8, 128, 4).transpose(1, 2)
        kernel(q, keys, keys, 0.1)
    with pytest.raises(RuntimeError, match="empty cache"):
        kernel(q, torch.randn(8, 0, 128), torch.randn(8, 0, 128), 0.1)


def test_attend_reads_a_16_bit_cache_with_the_kernel_chosen_at_load(monkeypatch) -> None:
    generator = torch.Generator().manual_seed(2)
    keys, values = (cache_like(8, 300, 128, torch.bfloat16, generator) for _ in range(2))
    q = torch.randn(16, 128, generator=generator)
    expected = reference(q, keys, values, 128**-0.5).view(-1)
    kernel, why = cpu_attention.choose({})
    if kernel is None:
        pytest.skip(why)
    assert "decode attention kernel" in why
    calls = []
    monkeypatch.setattr(kv_attention, "_decode_kernel", lambda *args: calls.append(1) or kernel(*args))
    out = kv_attention.attend(q, keys, values, 128**-0.5)
    assert calls and (out.double() - expected).abs().max() < 1e-5
    monkeypatch.setattr(kv_attention, "_decode_kernel", None)  # off: PyTorch's kernel, query rounded
    assert (kv_attention.attend(q, keys, values, 128**-0.5).double() - expected).abs().max() < 1e-2


def test_sdpa_when_asked_or_when_the_kernel_cannot_be_built(monkeypatch) -> None:
    kernel, why = cpu_attention.choose({"QWEN_CPU_ATTENTION": "sdpa"})
    assert kernel is None and why == "QWEN_CPU_ATTENTION=sdpa"

    def no_compiler(environ=None):
        raise KernelBuildError("no C++ compiler 'g++' found: install g++")

    monkeypatch.setattr(cpu_attention, "chosen_isa", no_compiler)
    kernel, why = cpu_attention.choose({})
    assert kernel is None and "no C++ compiler" in why and "install g++" in why
