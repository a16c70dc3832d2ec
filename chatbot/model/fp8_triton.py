"""Triton matmul with FP8 block-scaled weights and 16-bit activations (imported only where Triton exists).

Each program computes a BLOCK_M x BLOCK_N tile of ``x @ dequant(w).T``: it streams the FP8 weight
tile (one byte per weight from memory), multiplies it by its 128x128 block's scale in registers and
accumulates in FP32. ``BLOCK_K`` divides the quantization block, so every K-tile has one scale per
output row.

Two ways to turn the e4m3 byte into a number:

* ``decode="cast"``: the hardware conversion (GPUs with FP8 support, compute capability >= 8.9);
* ``decode="bits"``: bit arithmetic that any GPU runs (what FP8 Marlin does on Ampere and Turing):
  the byte's exponent and mantissa bits moved into an FP16 (bias 15 instead of 7), times 2^8. It is
  exact for every finite e4m3 value, subnormals included, so older GPUs keep 1-byte weights.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _w8a16_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_sn,
    stride_sk,
    stride_ym,
    stride_yn,
    QBLOCK_N: tl.constexpr,
    QBLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DECODE_BITS: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + k[None, :] * stride_xk,
            mask=(offs_m[:, None] < M) & (k[None, :] < K),
            other=0.0,
        )
        w_ptrs = w_ptr + offs_n[:, None] * stride_wn + k[None, :] * stride_wk
        w_mask = (offs_n[:, None] < N) & (k[None, :] < K)
        if DECODE_BITS:  # w_ptr points at the raw e4m3 bytes (uint8)
            bits = tl.load(w_ptrs, mask=w_mask, other=0).to(tl.uint16)
            half = ((bits & 0x7F) << 7) | ((bits & 0x80) << 8)
            w_value = half.to(tl.float16, bitcast=True).to(tl.float32) * 256.0
        else:
            w_value = tl.load(w_ptrs, mask=w_mask, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + (offs_n // QBLOCK_N) * stride_sn + (k0 // QBLOCK_K) * stride_sk, mask=offs_n < N, other=0.0)
        w_tile = (w_value * s[:, None]).to(x.dtype)
        acc += tl.dot(x, tl.trans(w_tile))
    tl.store(
        y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
        acc.to(y_ptr.dtype.element_ty),
        mask=(offs_m[:, None] < M) & (offs_n[None, :] < N),
    )


def w8a16_block_matmul(
    x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], decode: str = "cast"
) -> torch.Tensor:
    """``x [M, K] (bf16/fp16) @ dequant(weight [N, K] fp8, scale_inv)^T`` -> [M, N] in x's dtype.

    ``decode``: "cast" (hardware FP8 conversion) or "bits" (bit arithmetic, any GPU); see the module docstring.
    """
    if decode not in ("cast", "bits"):
        raise ValueError(f"decode must be 'cast' or 'bits', not {decode!r}")
    rows, inner = x.shape
    outer = weight.shape[0]
    block_k = min(64, block[1])
    if block[1] % block_k:
        raise ValueError(f"quantization block {block} is not a multiple of the kernel's K tile {block_k}")
    x = x.contiguous()
    scales = scale_inv.float().contiguous()
    out = torch.empty(rows, outer, dtype=x.dtype, device=x.device)
    block_m = 16 if rows <= 16 else 64
    block_n = 64
    grid = (triton.cdiv(rows, block_m), triton.cdiv(outer, block_n))
    weight_arg = weight.view(torch.uint8) if decode == "bits" else weight
    # Launch on the tensors' own GPU (and its current stream), not on whichever GPU is current.
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _w8a16_kernel[grid](
            x,
            weight_arg,
            scales,
            out,
            rows,
            outer,
            inner,
            x.stride(0),
            x.stride(1),
            weight_arg.stride(0),
            weight_arg.stride(1),
            scales.stride(0),
            scales.stride(1),
            out.stride(0),
            out.stride(1),
            QBLOCK_N=block[0],
            QBLOCK_K=block[1],
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            DECODE_BITS=decode == "bits",
        )
    return out
