"""Block-FP8 and compressed-tensors weights: dequantization against independent references."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from chatbot.model import fp8
from chatbot.model.checkpoint import inspect_checkpoint
from chatbot.model.formats import FormatKind


def reference_block_dequant(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Element by element, block by block: the definition, written without any vectorised trick."""
    out = torch.empty(weight.shape, dtype=torch.float32)
    rows, cols = weight.shape
    values = weight.float()
    for bi in range(math.ceil(rows / block[0])):
        for bj in range(math.ceil(cols / block[1])):
            r0, c0 = bi * block[0], bj * block[1]
            out[r0 : r0 + block[0], c0 : c0 + block[1]] = values[r0 : r0 + block[0], c0 : c0 + block[1]] * float(
                scale_inv[bi, bj]
            )
    return out


@pytest.mark.parametrize("shape", [(256, 256), (300, 200), (832, 576), (17, 130)])
def test_block_dequantization_matches_reference_with_partial_edge_blocks(shape: tuple[int, int]) -> None:
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.1
    q, scale_inv = fp8.quantize_block_fp8(weight)
    assert q.dtype == torch.float8_e4m3fn
    assert tuple(scale_inv.shape) == (math.ceil(shape[0] / 128), math.ceil(shape[1] / 128))
    ours = fp8.dequantize_block_fp8(q, scale_inv, dtype=torch.float32)
    torch.testing.assert_close(ours, reference_block_dequant(q, scale_inv, (128, 128)), rtol=0, atol=0)
    # and the quantization itself is faithful: e4m3 keeps 3 mantissa bits (relative error <= 1/16)
    assert (ours - weight).abs().max() <= weight.abs().max() / 16


def test_dequantization_rejects_a_scale_of_the_wrong_shape() -> None:
    q, scale_inv = fp8.quantize_block_fp8(torch.randn(256, 256))
    with pytest.raises(ValueError, match=r"expected \[2, 2\]"):
        fp8.dequantize_block_fp8(q, scale_inv[:1])


def test_generated_fp8_checkpoint_matches_its_bf16_twin(make_checkpoint) -> None:
    """make-model with the same seed: the FP8 file's weights dequantize to the BF16 file's within FP8 error."""
    fp8_dir, bf16_dir = make_checkpoint("fp8"), make_checkpoint("bf16")
    info = inspect_checkpoint(fp8_dir)
    assert info.format.kind is FormatKind.FP8_BLOCK and info.format.block_size == (128, 128)
    name = "model.layers.1.mlp.down_proj.weight"
    with safe_open(str(fp8_dir / "model.safetensors"), "pt") as f:
        q, scale_inv = f.get_tensor(name), f.get_tensor(name + "_scale_inv")
        embed = f.get_tensor("model.embed_tokens.weight")
    assert scale_inv.dtype == torch.bfloat16  # as in Qwen's own FP8 checkpoints
    assert embed.dtype == torch.bfloat16  # embeddings, norms and lm_head stay BF16
    original = _read(bf16_dir, name).float()
    dense = reference_block_dequant(q, scale_inv, (128, 128))
    assert (dense - original).abs().max() <= original.abs().max() / 16


def test_compressed_tensors_dequantization_matches_reference(make_checkpoint) -> None:
    ct_dir, bf16_dir = make_checkpoint("compressed-tensors"), make_checkpoint("bf16")
    info = inspect_checkpoint(ct_dir)
    assert info.format.kind is FormatKind.COMPRESSED_TENSORS
    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(ct_dir / "model.safetensors"), "pt") as f:
        q, scale = f.get_tensor(name), f.get_tensor(name.removesuffix("weight") + "weight_scale")
    assert q.dtype == torch.float8_e4m3fn and tuple(scale.shape) == (q.shape[0], 1)
    ours = info.format.dequantize(name, q, scale, torch.float32)
    torch.testing.assert_close(ours, q.float() * scale.float(), rtol=0, atol=0)
    original = _read(bf16_dir, name).float()
    assert (ours - original).abs().max() <= original.abs().max() / 16


def _read(folder, name: str) -> torch.Tensor:
    info = inspect_checkpoint(folder)
    with safe_open(str(info.tensors[name].file), "pt") as f:
        return f.get_tensor(name)
