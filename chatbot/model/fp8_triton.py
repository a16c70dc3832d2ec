"""Triton matmuls with FP8 block-scaled weights and 16-bit activations (imported only where Triton exists).

Two kernels, chosen per call by ``fp8_tiles.choose_tiles``:

* the general one: each program computes a BLOCK_M x BLOCK_N tile of ``x @ dequant(w).T``, streaming
  the FP8 weight tile (one byte per weight from memory), multiplying it by its block's scale in
  registers and accumulating in FP32; ``BLOCK_K`` divides the quantization block, so every K tile has
  one scale per output row;
* the retiled one for M <= 16 rows (decoding) with 128x128 blocks: narrow N tiles inside one scale
  block, whole 128-column K blocks (the weight decoded exactly to 16 bits, the block's scale applied
  once to the block's FP32 dot product) and split-K, so that layers with few outputs still keep the
  whole GPU reading weights (see ``fp8_tiles``).

Both run behind one custom operator, ``torch.ops.chatbot.fp8_block_matmul`` (``torch.library.triton_op``
with ``wrap_triton``), so ``torch.compile`` traces it like a built-in operator (and CUDA graphs can
capture it); on the CPU the operator computes the same product from the dequantized weight.

Two ways to turn the e4m3 byte into a number:

* ``decode="cast"``: the hardware conversion (GPUs with FP8 support, compute capability >= 8.9);
* ``decode="bits"``: bit arithmetic that any GPU runs (what FP8 Marlin does on Ampere and Turing):
  the byte's exponent and mantissa bits moved into an FP16 (bias 15 instead of 7), times 2^8. It is
  exact for every finite e4m3 value, subnormals included, so older GPUs keep 1-byte weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .fp8 import dequantize_block_fp8
from .fp8_tiles import choose_tiles


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


@triton.jit
def _w8a16_small_m_kernel(
    x_ptr,
    w_ptr,
    s_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_sn,
    stride_sk,
    stride_ys,
    stride_ym,
    K_BLOCKS_PER_SPLIT: tl.constexpr,
    QBLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    DECODE_BITS: tl.constexpr,
):
    """M <= BLOCK_M rows; BLOCK_K is the quantization block's width and BLOCK_N divides its height, so each
    (tile, K block) has one scale. Program (n, s) adds K blocks [s * K_BLOCKS_PER_SPLIT, ...) into slice s."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    scale_row = (pid_n * BLOCK_N) // QBLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in tl.range(0, K_BLOCKS_PER_SPLIT, num_stages=NUM_STAGES):
        k_block = pid_s * K_BLOCKS_PER_SPLIT + i
        k = k_block * BLOCK_K + offs_k
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=(offs_m[:, None] < M) & (k[None, :] < K), other=0.0
        )
        w_ptrs = w_ptr + offs_n[:, None] * stride_wn + k[None, :]
        w_mask = (offs_n[:, None] < N) & (k[None, :] < K)
        if DECODE_BITS:  # raw e4m3 bytes: exponent and mantissa moved into an FP16, times 2^8 (exact)
            bits = tl.load(w_ptrs, mask=w_mask, other=0).to(tl.uint16)
            half = ((bits & 0x7F) << 7) | ((bits & 0x80) << 8)
            w = (half.to(tl.float16, bitcast=True).to(tl.float32) * 256.0).to(x.dtype)
        else:
            w = tl.load(w_ptrs, mask=w_mask, other=0.0).to(tl.float32).to(x.dtype)  # exact: e4m3 fits 16 bits
        scale = tl.load(s_ptr + scale_row * stride_sn + k_block * stride_sk, mask=k_block * BLOCK_K < K, other=0.0)
        acc += tl.dot(x, tl.trans(w)) * scale
    tl.store(
        y_ptr + pid_s * stride_ys + offs_m[:, None] * stride_ym + offs_n[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=(offs_m[:, None] < M) & (offs_n[None, :] < N),
    )


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block_n: int,
    block_k: int,
    decode_bits: bool,
    wrap: Callable[[Any], Any],
) -> torch.Tensor:
    """Both kernels' launches; ``wrap`` is ``wrap_triton`` inside the operator, the identity otherwise.

    ``weight`` holds the e4m3 bytes as uint8 (the operator's schema: opcheck compares inputs before and
    after with arithmetic that FP8 tensors lack on the CPU)."""
    rows, inner = x.shape
    outer = weight.shape[0]
    tiles = choose_tiles(rows, outer, inner, (block_n, block_k))
    x = x.contiguous()
    weight_arg = weight if decode_bits else weight.view(torch.float8_e4m3fn)
    out = torch.empty(rows, outer, dtype=x.dtype, device=x.device)
    if tiles.small_m:
        k_blocks = triton.cdiv(inner, block_k)
        per_split = triton.cdiv(k_blocks, tiles.split_k)
        partial = out if tiles.split_k == 1 else x.new_empty((tiles.split_k, rows, outer), dtype=torch.float32)
        wrap(_w8a16_small_m_kernel)[(triton.cdiv(outer, tiles.block_n), tiles.split_k)](
            x,
            weight_arg,
            scale_inv,
            partial,
            rows,
            outer,
            inner,
            x.stride(0),
            weight_arg.stride(0),
            scale_inv.stride(0),
            scale_inv.stride(1),
            rows * outer,
            outer,
            K_BLOCKS_PER_SPLIT=per_split,
            QBLOCK_N=block_n,
            BLOCK_M=tiles.block_m,
            BLOCK_N=tiles.block_n,
            BLOCK_K=tiles.block_k,
            NUM_STAGES=tiles.num_stages,
            DECODE_BITS=decode_bits,
            num_warps=tiles.num_warps,
        )
        return out if tiles.split_k == 1 else partial.sum(0).to(x.dtype)
    wrap(_w8a16_kernel)[(triton.cdiv(rows, tiles.block_m), triton.cdiv(outer, tiles.block_n))](
        x,
        weight_arg,
        scale_inv,
        out,
        rows,
        outer,
        inner,
        x.stride(0),
        x.stride(1),
        weight_arg.stride(0),
        weight_arg.stride(1),
        scale_inv.stride(0),
        scale_inv.stride(1),
        out.stride(0),
        out.stride(1),
        QBLOCK_N=block_n,
        QBLOCK_K=block_k,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        BLOCK_K=tiles.block_k,
        DECODE_BITS=decode_bits,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
    )
    return out


@triton_op("chatbot::fp8_block_matmul", mutates_args=())
def fp8_block_matmul(
    x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block_n: int, block_k: int, decode_bits: bool
) -> torch.Tensor:
    """``x [M, K] (bf16/fp16) @ dequant(weight [N, K], scale_inv [N/block_n, K/block_k] fp32)^T`` -> [M, N].

    ``weight``: the e4m3 bytes as uint8 (``fp8_weight.view(torch.uint8)``). ``decode_bits``: decode them
    with bit arithmetic (any GPU) instead of the hardware cast.
    """
    if x.device.type == "cpu":  # what torch.compile and opcheck trace for CPU tensors (no Triton there)
        return _cpu_product(x, weight, scale_inv, block_n, block_k)
    return _launch(x, weight, scale_inv, block_n, block_k, decode_bits, wrap_triton)


@fp8_block_matmul.register_kernel("cpu")
def _fp8_block_matmul_cpu(x, weight, scale_inv, block_n, block_k, decode_bits):
    """The CPU implementation (eager calls on CPU tensors)."""
    return _cpu_product(x, weight, scale_inv, block_n, block_k)


def _cpu_product(x, weight, scale_inv, block_n, block_k):
    """The same product in PyTorch: the dequantized weight, an FP32 matmul, rounded to x's dtype."""
    dense = dequantize_block_fp8(weight.view(torch.float8_e4m3fn), scale_inv, (block_n, block_k), torch.float32)
    return (x.float() @ dense.t()).to(x.dtype)


def w8a16_block_matmul(
    x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], decode: str = "cast"
) -> torch.Tensor:
    """``x [M, K] (bf16/fp16) @ dequant(weight [N, K] fp8, scale_inv)^T`` -> [M, N] in x's dtype.

    ``decode``: "cast" (hardware FP8 conversion) or "bits" (bit arithmetic, any GPU); see the module docstring.
    Runs the custom operator, on the tensors' own GPU (and its current stream), not on whichever is current.
    """
    if decode not in ("cast", "bits"):
        raise ValueError(f"decode must be 'cast' or 'bits', not {decode!r}")
    block_k = min(64, block[1])
    if block[1] % block_k or block_k & (block_k - 1):
        raise ValueError(f"quantization block {block} is not a multiple of the kernel's K tile {block_k}")
    scales = scale_inv.float().contiguous()  # no copy when it is already (Fp8Linear keeps FP32 scales)
    with torch.cuda.device(x.device) if x.is_cuda and not torch.compiler.is_compiling() else contextlib.nullcontext():
        return fp8_block_matmul(x, weight.contiguous().view(torch.uint8), scales, block[0], block[1], decode == "bits")


def launch_kernels(
    x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], decode: str = "cast"
) -> torch.Tensor:
    """The Triton kernels launched directly, not through the operator: what Triton's CPU interpreter
    (``TRITON_INTERPRET=1``) runs in the tests, since the operator computes CPU tensors in PyTorch."""
    scales = scale_inv.float().contiguous()
    weight = weight.contiguous().view(torch.uint8)
    return _launch(x, weight, scales, block[0], block[1], decode == "bits", lambda kernel: kernel)
