"""FP8 layers that read the same input packed into one: one kernel launch (and one read of the input) instead
of two or three, and a wider N that keeps more of the GPU busy at batch 1.

``pack_fp8_linears`` concatenates the FP8 weights along N and their block scales with them; this needs
every part's N to be a whole number of scale blocks (a scale block may not hold rows of two parts).
Qwen3-0.6B's q/k/v (2048 + 1024 + 1024) and gate/up (3072 + 3072) qualify; the test model's 832-wide MLP
does not, and keeps separate layers.

The loader packs gate/up (``pack_mlps``): the MLP's forward is two lines, so ``PackedFp8MLP`` replaces it.
q/k/v are packed by ``pack_fp8_linears`` too, but wiring them in means owning the attention's forward
(transformers' calls q_proj, k_proj and v_proj one by one), which belongs with a decode step of our own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .fp8_linear import Fp8Linear


def can_pack(out_features: Sequence[int], block: tuple[int, int]) -> bool:
    """Whether layers with these output sizes can share one weight (each a whole number of scale blocks)."""
    return len(out_features) > 1 and all(n % block[0] == 0 for n in out_features)


def pack_fp8_linears(layers: Sequence[Fp8Linear]) -> Fp8Linear:
    """One ``Fp8Linear`` computing ``cat([layer(x) for layer in layers], -1)``, with the first layer's kernels.

    Raises:
        ValueError: the layers differ in input size or block size, or a part is not whole scale blocks.
    """
    first = layers[0]
    if any(layer.in_features != first.in_features or layer.block != first.block for layer in layers):
        raise ValueError("only layers with the same input size and block size can be packed")
    if not can_pack([layer.out_features for layer in layers], first.block):
        raise ValueError(f"each packed part must be a whole number of {first.block[0]}-row scale blocks")
    packed = Fp8Linear(first.in_features, sum(layer.out_features for layer in layers), first.block, first.kernels)
    packed.weight = nn.Parameter(torch.cat([layer.weight for layer in layers]), requires_grad=False)
    packed.weight_scale_inv = nn.Parameter(torch.cat([layer.weight_scale_inv for layer in layers]), requires_grad=False)
    packed.prepare_scales()
    return packed


class PackedFp8MLP(nn.Module):
    """Qwen3's MLP, ``down(act(gate(x)) * up(x))``, with gate and up in one FP8 weight."""

    def __init__(self, gate_proj: Fp8Linear, up_proj: Fp8Linear, down_proj: nn.Module, act_fn: nn.Module) -> None:
        super().__init__()
        self.gate_up_proj = pack_fp8_linears([gate_proj, up_proj])
        self.intermediate_size = gate_proj.out_features
        self.down_proj = down_proj
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


def packable_mlp(module: nn.Module, block: tuple[int, int] | None = None, layer_type: type = Fp8Linear) -> bool:
    """An MLP (gate_proj, up_proj, down_proj, act_fn) whose gate and up are ``layer_type`` and can be packed."""
    gate, up = getattr(module, "gate_proj", None), getattr(module, "up_proj", None)
    if not (isinstance(gate, layer_type) and isinstance(up, layer_type)):
        return False
    if not (hasattr(module, "down_proj") and hasattr(module, "act_fn")) or gate.in_features != up.in_features:
        return False
    return can_pack([gate.out_features, up.out_features], block or gate.block)


def packed_mlp_shapes(model: nn.Module, block: tuple[int, int]) -> set[tuple[int, int]]:
    """(out, in) of the gate/up weights ``pack_mlps`` will make from this model's ``nn.Linear`` layers (for the
    kernels' self-check, which runs before the layers become ``Fp8Linear``)."""
    return {
        (m.gate_proj.out_features + m.up_proj.out_features, m.gate_proj.in_features)
        for m in model.modules()
        if packable_mlp(m, block, nn.Linear)
    }


def pack_mlps(model: nn.Module) -> int:
    """Replace every MLP whose gate and up can be packed by a ``PackedFp8MLP``; returns how many were."""
    names = [name for name, module in model.named_modules() if packable_mlp(module)]
    for name in names:
        mlp = model.get_submodule(name)
        model.set_submodule(name, PackedFp8MLP(mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn))
    return len(names)
