"""Block-wise FP8 (e4m3) weight quantization, as in Qwen's official ``*-FP8`` checkpoints.

A weight of shape [out, in] is cut into 128x128 blocks (partial blocks at the right and bottom
edges). Each block stores ``float8_e4m3fn`` values and one ``weight_scale_inv`` number, so that
``dequantized = fp8_value * weight_scale_inv`` of its block. ``weight_scale_inv`` has shape
[ceil(out/128), ceil(in/128)].
"""

from __future__ import annotations

import math

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
DEFAULT_BLOCK = (128, 128)


def scale_shape(weight_shape: tuple[int, ...], block: tuple[int, int] = DEFAULT_BLOCK) -> tuple[int, int]:
    """Shape of ``weight_scale_inv`` for a 2-D weight."""
    out_features, in_features = weight_shape
    return math.ceil(out_features / block[0]), math.ceil(in_features / block[1])


def expand_block_scales(scale_inv: torch.Tensor, weight_shape: tuple[int, ...], block: tuple[int, int]) -> torch.Tensor:
    """Repeat each block's scale over its block, cropped to the weight's shape (float32)."""
    rows, cols = weight_shape
    return scale_inv.float().repeat_interleave(block[0], dim=0)[:rows].repeat_interleave(block[1], dim=1)[:, :cols]


def dequantize_block_fp8(
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int] = DEFAULT_BLOCK,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """FP8 weight and per-block inverse scales -> dense weight in ``dtype``.

    The product is formed in FP32 (exact for an e4m3 value times a 16-bit scale) and rounded once.

    Raises:
        ValueError: the scale's shape does not match the weight and block size.
    """
    expected = scale_shape(tuple(weight.shape), block)
    if tuple(scale_inv.shape) != expected:
        raise ValueError(
            f"weight_scale_inv has shape {list(scale_inv.shape)}, expected {list(expected)} "
            f"for a weight of shape {list(weight.shape)} with {block[0]}x{block[1]} blocks"
        )
    rows, cols = weight.shape
    scales = scale_inv.to(weight.device, torch.float32)
    if rows % block[0] or cols % block[1]:  # partial blocks at the edges: expand the scales
        return (weight.float() * expand_block_scales(scales, (rows, cols), block)).to(dtype)
    blocks = weight.float().view(expected[0], block[0], expected[1], block[1])
    return (blocks * scales[:, None, :, None]).view(rows, cols).to(dtype)


def quantize_block_fp8(
    weight: torch.Tensor, block: tuple[int, int] = DEFAULT_BLOCK, scale_dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense weight -> (FP8 weight, ``weight_scale_inv`` in ``scale_dtype``).

    The scale is rounded to ``scale_dtype`` *before* dividing, so dequantizing with the stored
    scale reproduces the quantized values exactly; values are clamped to the FP8 range.
    """
    rows, cols = weight.shape
    n_row_blocks, n_col_blocks = scale_shape((rows, cols), block)
    padded = torch.zeros(n_row_blocks * block[0], n_col_blocks * block[1], dtype=torch.float32, device=weight.device)
    padded[:rows, :cols] = weight.float()
    blocks = padded.view(n_row_blocks, block[0], n_col_blocks, block[1])
    amax = blocks.abs().amax(dim=(1, 3))
    scale_inv = (amax / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny).to(scale_dtype)
    scaled = weight.float() / expand_block_scales(scale_inv, (rows, cols), block)
    return scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale_inv
