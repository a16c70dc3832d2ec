"""q/k/v and gate/up packed into one FP8 weight each (block scales concatenated) compute what the separate
layers compute; the loader packs gate/up where the sizes allow. CPU only: the kernel is the dequantizing
reference (a GPU kernel sees the same packed weight and scales)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP

from chatbot.model.fp8 import dequantize_block_fp8, quantize_block_fp8
from chatbot.model.fp8_linear import Fp8Kernel, Fp8Kernels, Fp8Linear, spread_block_weight
from chatbot.model.fp8_packed import PackedFp8MLP, can_pack, pack_fp8_linears, pack_mlps, packed_mlp_shapes

BLOCK = (128, 128)


def reference_kernel(x, weight, scale_inv, block):
    return (x.float() @ dequantize_block_fp8(weight, scale_inv, block, torch.float32).t()).to(x.dtype)


KERNELS = Fp8Kernels(Fp8Kernel("reference", reference_kernel))


def fp8_layer(out_features: int, in_features: int, generator: torch.Generator) -> Fp8Linear:
    layer = Fp8Linear(in_features, out_features, BLOCK, KERNELS)
    q, scale_inv = quantize_block_fp8(
        spread_block_weight(out_features, in_features, BLOCK, generator), scale_dtype=torch.float32
    )
    layer.weight, layer.weight_scale_inv = torch.nn.Parameter(q, False), torch.nn.Parameter(scale_inv, False)
    return layer


def test_packed_qkv_equals_the_three_separate_layers() -> None:
    """Qwen3-0.6B's attention projections: q 2048, k and v 1024 outputs from 1024 inputs."""
    generator = torch.Generator().manual_seed(0)
    q_proj, k_proj, v_proj = (fp8_layer(n, 1024, generator) for n in (2048, 1024, 1024))
    qkv = pack_fp8_linears([q_proj, k_proj, v_proj])
    assert qkv.weight.shape == (4096, 1024) and qkv.weight_scale_inv.shape == (32, 8)
    for rows in (1, 5, 16):
        x = torch.randn(rows, 1024, generator=generator).to(torch.bfloat16)
        q, k, v = qkv(x).split([2048, 1024, 1024], dim=-1)
        assert torch.equal(q, q_proj(x)) and torch.equal(k, k_proj(x)) and torch.equal(v, v_proj(x))


def test_packed_gate_up_mlp_equals_qwen3s_mlp_and_the_loader_finds_it() -> None:
    config = Qwen3Config(hidden_size=256, intermediate_size=384, hidden_act="silu")
    mlp = Qwen3MLP(config)
    assert packed_mlp_shapes(torch.nn.ModuleDict({"mlp": mlp}), BLOCK) == {(768, 256)}
    generator = torch.Generator().manual_seed(1)
    mlp.gate_proj, mlp.up_proj, mlp.down_proj = (
        fp8_layer(384, 256, generator),
        fp8_layer(384, 256, generator),
        (fp8_layer(256, 384, generator)),
    )
    x = torch.randn(2, 3, 256, generator=generator).to(torch.bfloat16)
    expected = mlp(x)
    holder = torch.nn.ModuleDict({"mlp": mlp})
    assert pack_mlps(holder) == 1 and isinstance(holder["mlp"], PackedFp8MLP)
    assert holder["mlp"].gate_up_proj.weight.shape == (768, 256)
    assert torch.equal(holder["mlp"](x), expected)


def test_parts_that_split_a_scale_block_are_not_packed() -> None:
    """The test model's 832-wide MLP: 6.5 scale blocks per part, so gate and up stay separate."""
    assert not can_pack([832, 832], BLOCK) and can_pack([3072, 3072], BLOCK)
    generator = torch.Generator().manual_seed(2)
    with pytest.raises(ValueError, match="whole number"):
        pack_fp8_linears([fp8_layer(832, 256, generator), fp8_layer(832, 256, generator)])
