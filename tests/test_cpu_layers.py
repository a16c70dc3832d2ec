"""CPU layers: 16-bit weights for decode, the measured-fastest dtype for prefill, FP16 overflow handled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chatbot.cpu_layers import DECODE_MAX_ROWS, CpuLinear, measure_prefill_dtype, short_name


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


def test_fp16_overflow_is_redone_in_fp32() -> None:
    weight = torch.full((4, 8), 100.0)
    x = torch.full((1, 8), 1000.0)  # 8 * 100 * 1000 = 800000 > FP16's 65504
    out = layer(torch.float16, torch.float32, weight)(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full((1, 4), 800000.0))


@pytest.mark.parametrize(("name", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_prefill_dtype_can_be_forced(monkeypatch, name, dtype) -> None:
    monkeypatch.setenv("QWEN_CPU_PREFILL_DTYPE", name)
    measure_prefill_dtype.cache_clear()
    try:
        profile = measure_prefill_dtype(torch.float16)
        assert profile.prefill_dtype == dtype and profile.forced
        assert "QWEN_CPU_PREFILL_DTYPE" in profile.describe()
    finally:
        measure_prefill_dtype.cache_clear()


def test_measured_choice_is_the_fastest_measured() -> None:
    measure_prefill_dtype.cache_clear()
    profile = measure_prefill_dtype(torch.float16)
    assert set(profile.gflops) == {"FP32", "BF16", "FP16"}
    assert profile.gflops[short_name(profile.prefill_dtype)] == max(profile.gflops.values())
    assert "measured fastest here" in profile.describe()
