"""The CPU decode attention kernel: one query position against a request's 16-bit key/value cache.

A decoded token's attention reads every cached key and value once. PyTorch's flash-attention kernel
(``scaled_dot_product_attention``) took 3-4x the time the bytes need for one query row at 2,048 cached
tokens (it is written for blocks of many query rows), so long conversations slowed more than llama.cpp's.
``cpu_attention.cpp`` (beside this file) does the one-row case directly: per key/value head, its query
rows (the grouped heads) against the keys as stored, a softmax in FP32, the weighted sum of the values,
heads split across torch's threads. The query stays in FP32 (SDPA rounds it to the cache's dtype).

Built as the INT8 kernel is (``cpu_int8_dot.build_library``: at first use, with the C++ compiler
Inductor uses, cached in ``$QWEN_KERNEL_CACHE``), checked at load against an FP64 reference, and used
by ``kv_attention.attend`` for single decode rows; prompt chunks and batched rows keep SDPA.
``QWEN_CPU_ATTENTION=sdpa`` (``--cpu-attention sdpa``) keeps PyTorch's kernel for every row. Without a
compiler, on a CPU without AVX2, or if the check fails, SDPA is used and the precision details say why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

import torch

from ..settings import tuning
from .cpu_int8_dot import KernelBuildError, build_library, cache_dir, compiler, held_to_avx2

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_suffix(".cpp")
ISAS = {"avx512": 2, "avx2": 1}  # fastest first, with the library's bit for each
CHECK_TOLERANCE = 1e-3  # of the largest output value, against FP64 (measured: about 4e-7)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


@cache
def load_library() -> None:
    """Build (first time) and load the library; its operators become ``torch.ops.qwen_attention.*``.

    Raises ``KernelBuildError``.
    """
    path = build_library(cache_dir(), compiler(), SOURCE, "the decode attention kernel")
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as exc:
        raise KernelBuildError(f"the built kernel {path} does not load: {exc}") from exc


def chosen_isa(environ: Mapping[str, str] | None = None) -> str:
    """The fastest instruction set this CPU runs (AVX2 only under ``ATEN_CPU_CAPABILITY=avx2``, as the
    bench's AVX2 runs set it). Raises ``KernelBuildError`` (no build, or a CPU without AVX2 and F16C)."""
    environ = os.environ if environ is None else environ
    load_library()
    mask = int(torch.ops.qwen_attention.supported_isas())
    names = [name for name, bit in ISAS.items() if mask & bit]
    if held_to_avx2(environ):
        names = [name for name in names if name == "avx2"]
    if not names:
        raise KernelBuildError("this CPU has no AVX2 with F16C")
    return names[0]


def decode_kernel(isa: str) -> AttentionFn:
    """The kernel on ``isa``: (q [heads, d] FP32, keys, values [kv_heads, length, d], scaling) -> [heads, d] FP32."""
    load_library()
    bit = ISAS[isa]

    def decode(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
        return torch.ops.qwen_attention.decode(q, keys, values, scaling, bit)

    decode.isa = isa  # type: ignore[attr-defined]
    return decode


def reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
    """The same attention in FP64 with PyTorch's own operations: q [heads, d], keys/values [kv_heads, length, d]
    -> [heads, d] (the check below, and the tests)."""
    kv_heads, _, dim = keys.shape
    grouped = q.double().view(kv_heads, -1, dim)
    weights = torch.softmax(grouped @ keys.double().transpose(1, 2) * scaling, dim=-1)
    return (weights @ values.double()).view(q.shape)


def check(kernel: AttentionFn) -> float:
    """The kernel's largest error, relative to the largest output, against FP64 on random BF16 and FP16
    caches of Qwen3's head shapes (16 query heads over 8 key/value heads of 128, and one other shape)."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for dtype in (torch.bfloat16, torch.float16):
        for heads, kv_heads, dim, length in ((16, 8, 128, 300), (4, 1, 64, 33)):
            keys = torch.randn(kv_heads, length + 5, dim, generator=generator).to(dtype)[:, :length]
            values = torch.randn(kv_heads, length + 5, dim, generator=generator).to(dtype)[:, :length]
            q = torch.randn(heads, dim, generator=generator) * 2
            expected = reference(q, keys, values, dim**-0.5)
            out = kernel(q, keys, values, dim**-0.5).double()
            worst = max(worst, ((out - expected).abs().max() / expected.abs().max()).item())
    return worst


def choose(environ: Mapping[str, str] | None = None) -> tuple[AttentionFn | None, str]:
    """The decode attention kernel to use, or None for PyTorch's SDPA, and the reason in a few words."""
    if tuning(environ).cpu_attention == "sdpa":
        return None, "QWEN_CPU_ATTENTION=sdpa"
    try:
        kernel = decode_kernel(chosen_isa(environ))
        error = check(kernel)
    except (KernelBuildError, RuntimeError) as exc:  # RuntimeError: the operator refused the check's inputs
        log.warning("The decode attention kernel is not used (%s); PyTorch's attention reads the cache", exc)
        return None, f"decode attention kernel unavailable: {exc}"
    if error > CHECK_TOLERANCE:
        log.warning("The decode attention kernel is off by %.1e against FP64; PyTorch's attention is used", error)
        return None, f"decode attention kernel off by {error:.1e}"
    isa = getattr(kernel, "isa", "")
    return kernel, f"{isa.upper().replace('AVX512', 'AVX-512')} decode attention kernel (error {error:.0e})"
