"""CPU layers: 16-bit weights for decode, the measured-fastest dtype for prefill, FP16 overflow handled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chatbot.model.cpu_layers import (
    BATCHED_DECODE_ROWS,
    DECODE_MAX_ROWS,
    CpuLinear,
    batched_decode_rows,
    choose_prefill_dtype,
    use_fp32_decode,
)


def layer(storage: torch.dtype, prefill: torch.dtype, weight: torch.Tensor) -> CpuLinear:
    module = CpuLinear(weight.shape[1], weight.shape[0], False, storage, prefill)
    module.weight = nn.Parameter(weight.to(storage), requires_grad=False)
    return module


@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("prefill", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, DECODE_MAX_ROWS, DECODE_MAX_ROWS + 1, 64])
def test_both_paths_match_an_fp32_reference(storage, prefill, rows) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=generator) * 0.05
    x = torch.randn(2, rows, 64, generator=generator)
    out = layer(storage, prefill, weight)(x)
    reference = F.linear(x, weight.to(storage).float())
    assert out.dtype == torch.float32 and out.shape == (2, rows, 96)
    torch.testing.assert_close(out, reference, rtol=0.02, atol=0.02)


def test_fp32_decode_after_an_overflow() -> None:
    weight = torch.full((4, 8), 100.0)
    x = torch.full((1, 8), 1000.0)  # 8 * 100 * 1000 = 800000 > FP16's 65504
    module = layer(torch.float16, torch.float32, weight)
    assert not torch.isfinite(module(x)).all()
    assert use_fp32_decode(module) and not use_fp32_decode(module)  # switched once
    torch.testing.assert_close(module(x), torch.full((1, 4), 800000.0))


@pytest.mark.parametrize(
    ("flags", "dtype"),
    [
        (frozenset({"avx2", "fma"}), torch.float32),
        (frozenset({"avx2", "avx512f", "avx512_bf16"}), torch.bfloat16),
        (frozenset({"avx2", "amx_bf16"}), torch.bfloat16),
    ],
)
def test_prefill_dtype_follows_the_cpu(flags, dtype) -> None:
    choice = choose_prefill_dtype(torch.float16, flags, environ={}, isa="AVX512")
    assert choice.dtype == dtype and choice.copy
    assert "prefill in" in choice.describe() and "a copy made at load" in choice.describe()


@pytest.mark.parametrize(
    ("name", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_prefill_dtype_can_be_forced_both_ways(name, dtype) -> None:
    choice = choose_prefill_dtype(torch.float16, frozenset({"avx2"}), environ={"QWEN_CPU_PREFILL_DTYPE": name})
    assert choice.dtype == dtype and "QWEN_CPU_PREFILL_DTYPE" in choice.why
    assert choice.copy == (dtype != torch.float16)  # nothing to copy when prefill uses the stored weights
    with pytest.raises(ValueError, match="QWEN_CPU_PREFILL_DTYPE"):
        choose_prefill_dtype(torch.float16, frozenset(), environ={"QWEN_CPU_PREFILL_DTYPE": "int8"})


def test_kernels_limited_to_avx2_prefill_in_fp32() -> None:
    """ATEN_CPU_CAPABILITY=avx2 (or an AVX2-only CPU) means no BF16 matmul units in use, whatever the flags."""
    choice = choose_prefill_dtype(torch.float16, frozenset({"avx512_bf16"}), environ={}, isa="AVX2")
    assert choice.dtype == torch.float32


def test_prefill_copy_is_used_and_can_be_turned_off() -> None:
    weight = torch.randn(96, 64) * 0.05
    module = layer(torch.float16, torch.float32, weight)
    module.keep_prefill_copy()
    assert module.prefill_weight is not None and module.prefill_weight.dtype == torch.float32
    assert "prefill_weight" not in module.state_dict()  # a cache, never saved with the model
    x = torch.randn(1, 32, 64)
    torch.testing.assert_close(module(x), F.linear(x, weight.to(torch.float16).float()))
    assert not choose_prefill_dtype(torch.float16, frozenset(), environ={"QWEN_CPU_PREFILL_COPY": "0"}).copy


def test_batched_decode_rows_come_from_the_environment_with_a_clear_error() -> None:
    assert batched_decode_rows({}) == BATCHED_DECODE_ROWS
    assert batched_decode_rows({"QWEN_CPU_DECODE_ROWS": "16"}) == 16
    for bad in ("0", "17", "four"):
        with pytest.raises(ValueError, match="QWEN_CPU_DECODE_ROWS: input should be"):
            batched_decode_rows({"QWEN_CPU_DECODE_ROWS": bad})


def test_packed_bf16_copies_give_the_plain_copies_results_bit_for_bit() -> None:
    from chatbot.model.cpu_layers import packing_works

    assert not packing_works({"QWEN_CPU_PREFILL_PACK": "0"})
    if not packing_works({}):
        pytest.skip("this PyTorch build cannot pack BF16 weights for oneDNN")
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=generator) * 0.05
    plain, packed = layer(torch.float16, torch.bfloat16, weight), layer(torch.float16, torch.bfloat16, weight)
    plain.keep_prefill_copy(decode_rows=1)
    packed.keep_prefill_copy(decode_rows=1, pack=True)
    assert packed.prefill_packed and not plain.prefill_packed
    for rows in (2, 8, 300):  # a batched decode step and a prompt
        x = torch.randn(1, rows, 64, generator=generator)
        assert torch.equal(packed(x), plain(x))
    one = torch.randn(1, 1, 64, generator=generator)
    assert torch.equal(packed(one), plain(one))  # one row decodes from the FP16 weights in both
