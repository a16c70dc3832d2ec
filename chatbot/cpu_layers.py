"""CPU inference layers: 16-bit weights for decode, the fastest measured dtype for prefill.

Decoding one token is bound by memory bandwidth, so weights stored in FP16/BF16 (half the bytes of
FP32) decode about twice as fast. Prompt processing (prefill) is bound by matmul throughput, and on
CPUs without native 16-bit matmul units (AVX2) an FP32 GEMM is 3-4x faster than an FP16/BF16 one,
while CPUs with AVX512-BF16/AMX run BF16 fastest. So the residual stream stays FP32, the linear
layers keep 16-bit weights, and each matmul picks its path by the number of rows it multiplies:
few rows (decode) -> 16-bit weights as stored; many rows (prefill) -> the dtype measured fastest
here, converting the weight on the fly. ``QWEN_CPU_PREFILL_DTYPE=fp32|bf16|fp16`` forces the choice.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

DECODE_MAX_ROWS = 16  # up to this many rows a matmul reads weights more than it computes
DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP16_MAX = torch.finfo(torch.float16).max


@dataclass(frozen=True)
class CpuMatmulProfile:
    """Measured matmul throughput (GFLOP/s) per dtype for a prefill-sized problem, and the choice made."""

    prefill_dtype: torch.dtype
    gflops: dict[str, float]
    forced: bool = False

    def describe(self) -> str:
        name = short_name(self.prefill_dtype)
        if self.forced:
            return f"prefill in {name} (QWEN_CPU_PREFILL_DTYPE)"
        others = ", ".join(f"{k} {v:.0f}" for k, v in self.gflops.items() if k != name)
        return f"prefill in {name}, measured fastest here ({self.gflops[name]:.0f} GFLOP/s vs {others})"


def short_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPE_NAMES.items()}[dtype].upper()


@cache
def measure_prefill_dtype(storage_dtype: torch.dtype = torch.float16) -> CpuMatmulProfile:
    """Time a 128-row matmul (weight conversion included) in each dtype; pick the fastest (~50 ms)."""
    forced = os.environ.get("QWEN_CPU_PREFILL_DTYPE", "").strip().lower()
    if forced:
        if forced not in DTYPE_NAMES:
            raise ValueError(f"QWEN_CPU_PREFILL_DTYPE must be one of {', '.join(DTYPE_NAMES)}, not {forced!r}")
        return CpuMatmulProfile(DTYPE_NAMES[forced], {}, forced=True)
    generator = torch.Generator().manual_seed(0)
    rows, inner, outer = 128, 1024, 1024
    x = torch.randn(rows, inner, generator=generator)
    stored = (torch.randn(outer, inner, generator=generator) * 0.02).to(storage_dtype)
    gflops = {}
    for name, dtype in DTYPE_NAMES.items():

        def step(dtype: torch.dtype = dtype) -> None:
            F.linear(x.to(dtype), stored.to(dtype))

        step()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - start)
        gflops[name.upper()] = 2 * rows * inner * outer / best / 1e9
    fastest = max(gflops, key=lambda k: gflops[k])
    return CpuMatmulProfile(DTYPE_NAMES[fastest.lower()], gflops)


class CpuLinear(nn.Module):
    """``nn.Linear`` with 16-bit stored weights and FP32 inputs/outputs (see the module docstring)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, storage_dtype: torch.dtype, prefill_dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.prefill_dtype = prefill_dtype
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=storage_dtype, device="meta"), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=storage_dtype, device="meta"), requires_grad=False)
            if bias
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        rows = x.numel() // x.shape[-1]
        if rows <= DECODE_MAX_ROWS:
            out = F.linear(x.to(weight.dtype), weight, _cast(self.bias, weight.dtype))
            if weight.dtype == torch.float16 and not torch.isfinite(out).all():
                # FP16 overflow (a known Qwen3 risk with large activations): redo this matmul in FP32.
                out = F.linear(x.float(), weight.float(), _cast(self.bias, torch.float32))
            return out.to(x.dtype)
        dtype = self.prefill_dtype
        return F.linear(x.to(dtype), weight.to(dtype), _cast(self.bias, dtype)).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"weights={self.weight.dtype}, prefill={self.prefill_dtype}"
        )


def _cast(bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if bias is None else bias.to(dtype)


class CpuEmbedding(nn.Embedding):
    """Embedding table kept in 16 bits; looked-up rows are returned in the compute dtype."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None,
        storage_dtype: torch.dtype,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx, device="meta", dtype=storage_dtype)
        self.weight.requires_grad_(False)
        self.compute_dtype = compute_dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids).to(self.compute_dtype)


def convert_to_cpu_layers(model: nn.Module, storage_dtype: torch.dtype, prefill_dtype: torch.dtype) -> None:
    """Swap every ``nn.Linear`` and the input embedding of a (meta) model for the CPU layers above."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear:
            model.set_submodule(
                name,
                CpuLinear(
                    module.in_features, module.out_features, module.bias is not None, storage_dtype, prefill_dtype
                ),
            )
    embeddings = model.get_input_embeddings()
    replacement = CpuEmbedding(
        embeddings.num_embeddings, embeddings.embedding_dim, embeddings.padding_idx, storage_dtype
    )
    model.set_input_embeddings(replacement)
