"""Checkpoint formats the loader reads, detected from ``config.json``.

1. ``fp8``: Qwen's fine-grained FP8 (``quant_method: "fp8"``): FP8 projection weights with a
   ``weight_scale_inv`` per 128x128 block (see ``fp8.py``).
2. ``compressed-tensors``: FP8 weights with a per-tensor or per-channel ``weight_scale``, as written
   by llm-compressor. Parsed and dequantized by the ``compressed_tensors`` library.
3. ``plain``: unquantized BF16/FP16/FP32 safetensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from . import fp8

# The projections that FP8 checkpoints of Qwen3 quantize: every linear layer of every decoder layer.
PROJECTION_RE = re.compile(r"^model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")
FP8_QUANT_METHODS = ("fp8",)
CT_QUANT_METHOD = "compressed-tensors"
CT_FLOAT_FORMATS = ("float-quantized", "naive-quantized")
SUPPORTED_TEXT = "fp8 (Qwen block FP8), compressed-tensors FP8 (float-quantized) or unquantized BF16/FP16/FP32"


class FormatKind(str, Enum):
    FP8_BLOCK = "fp8"
    COMPRESSED_TENSORS = "compressed-tensors"
    PLAIN = "plain"


@dataclass(frozen=True)
class CheckpointFormat:
    """How a checkpoint stores its weights, and how to turn them back into dense tensors."""

    kind: FormatKind
    block_size: tuple[int, int] | None = None  # FP8_BLOCK only; None means one scale per tensor
    ct_config: Any = None  # compressed_tensors QuantizationConfig for COMPRESSED_TENSORS
    activation_scheme: str = "dynamic"

    @property
    def is_fp8(self) -> bool:
        return self.kind is not FormatKind.PLAIN

    @property
    def scale_suffix(self) -> str | None:
        return {FormatKind.FP8_BLOCK: "_scale_inv", FormatKind.COMPRESSED_TENSORS: "_scale"}.get(self.kind)

    def describe(self) -> str:
        if self.kind is FormatKind.FP8_BLOCK:
            block = f"{self.block_size[0]}x{self.block_size[1]} blocks" if self.block_size else "per-tensor scale"
            return f"FP8 e4m3, {block} (Qwen fine-grained FP8)"
        if self.kind is FormatKind.COMPRESSED_TENSORS:
            strategies = sorted({g.weights.strategy for g in self.ct_config.config_groups.values() if g.weights})
            return f"FP8 e4m3, {'/'.join(strategies)} scales (compressed-tensors)"
        return "unquantized"

    def scale_name(self, weight_name: str) -> str | None:
        """Name of the scale tensor that belongs to ``weight_name`` in this format."""
        return weight_name + self.scale_suffix if self.scale_suffix and weight_name.endswith(".weight") else None

    def expected_scale_shape(self, weight_shape: tuple[int, ...]) -> tuple[int, ...] | None:
        if self.kind is FormatKind.FP8_BLOCK:
            return fp8.scale_shape(weight_shape, self.block_size) if self.block_size else None
        return None

    def dequantize(self, name: str, weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Dense ``dtype`` weight from a stored FP8 weight and its scale."""
        if self.kind is FormatKind.FP8_BLOCK:
            if self.block_size is None:
                return (weight.float() * scale.float()).to(dtype)
            return fp8.dequantize_block_fp8(weight, scale, self.block_size, dtype)
        if self.kind is FormatKind.COMPRESSED_TENSORS:
            from compressed_tensors.quantization.lifecycle.forward import dequantize

            args = self._ct_weight_args(name)
            return dequantize(weight, scale.float(), args=args, dtype=torch.float32).to(dtype)
        raise AssertionError("plain checkpoints have no scales")

    def _ct_weight_args(self, name: str) -> Any:
        groups = [g for g in self.ct_config.config_groups.values() if g.weights is not None]
        if len(groups) == 1:
            return groups[0].weights
        module = name.removesuffix(".weight")
        for group in groups:  # several groups: the first whose targets name this module
            if any(_target_matches(target, module) for target in group.targets):
                return group.weights
        return groups[0].weights


def _target_matches(target: str, module: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    return target == "Linear" or module.endswith(target)


def detect_format(config: dict[str, Any], config_path: Path) -> CheckpointFormat:
    """Read ``quantization_config`` from a parsed ``config.json``.

    Raises:
        CheckpointError: an unknown ``quant_method`` or an FP8 variant this loader cannot read.
    """
    qcfg = config.get("quantization_config")
    if not qcfg:
        return CheckpointFormat(FormatKind.PLAIN)
    method = str(qcfg.get("quant_method", "")).lower()
    if method in FP8_QUANT_METHODS:
        return _fine_grained_fp8(qcfg, config_path)
    if method == CT_QUANT_METHOD:
        return _compressed_tensors(qcfg, config_path)
    raise CheckpointError(
        f"unknown quantization method {method or '(missing)'!r} in quantization_config",
        path=config_path,
        fix=f"Use a checkpoint in one of the supported formats: {SUPPORTED_TEXT}.",
    )


def _fine_grained_fp8(qcfg: dict[str, Any], config_path: Path) -> CheckpointFormat:
    fmt = str(qcfg.get("fmt", "e4m3")).lower()
    if fmt != "e4m3":
        raise CheckpointError(
            f"FP8 format {fmt!r} is not supported (only e4m3)",
            path=config_path,
            fix="Use Qwen's official *-FP8 checkpoint or convert a BF16 one with `python -m chatbot quantize`.",
        )
    block = qcfg.get("weight_block_size")
    if block is not None:
        if not (
            isinstance(block, list | tuple) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)
        ):
            raise CheckpointError(
                f"weight_block_size must be two positive integers, got {block!r}",
                path=config_path,
                fix="Set weight_block_size to [128, 128] as in Qwen's FP8 checkpoints.",
            )
        block = (int(block[0]), int(block[1]))
    return CheckpointFormat(
        FormatKind.FP8_BLOCK, block_size=block, activation_scheme=str(qcfg.get("activation_scheme", "dynamic"))
    )


def _compressed_tensors(qcfg: dict[str, Any], config_path: Path) -> CheckpointFormat:
    from compressed_tensors.quantization import QuantizationConfig
    from pydantic import ValidationError

    try:
        parsed = QuantizationConfig.model_validate(qcfg)
    except ValidationError as exc:
        raise CheckpointError(
            f"quantization_config is not a valid compressed-tensors config: {exc.errors()[0]['msg']}",
            path=config_path,
            fix="Re-export the checkpoint with llm-compressor, or use the BF16 checkpoint.",
        ) from exc
    problems = []
    if parsed.format not in CT_FLOAT_FORMATS:
        problems.append(f"format {parsed.format!r}")
    for name, group in parsed.config_groups.items():
        weights = group.weights
        if weights is None or weights.type != "float" or weights.num_bits != 8:
            problems.append(f"group {name} is not 8-bit float weights")
        elif weights.strategy not in ("tensor", "channel"):
            problems.append(f"group {name} uses the {weights.strategy!r} strategy")
    if problems:
        raise CheckpointError(
            "compressed-tensors checkpoint is not FP8 with per-tensor or per-channel scales: " + ", ".join(problems),
            path=config_path,
            fix="Use an FP8_DYNAMIC / FP8 export of llm-compressor, Qwen's *-FP8 checkpoint, or the BF16 checkpoint.",
        )
    return CheckpointFormat(FormatKind.COMPRESSED_TENSORS, ct_config=parsed)


def block_fp8_quantization_config(block: tuple[int, int] = fp8.DEFAULT_BLOCK) -> dict[str, Any]:
    """The ``quantization_config`` entry of Qwen's official FP8 checkpoints."""
    return {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": list(block)}


def compressed_tensors_quantization_config(strategy: str = "channel") -> dict[str, Any]:
    """``quantization_config`` of an llm-compressor FP8 export (``FP8_DYNAMIC`` or ``FP8`` preset)."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, preset_name_to_scheme

    scheme = preset_name_to_scheme("FP8_DYNAMIC" if strategy == "channel" else "FP8", ["Linear"])
    config = QuantizationConfig(
        config_groups={"group_0": scheme},
        quant_method=CT_QUANT_METHOD,
        format="float-quantized",
        ignore=["lm_head"],
        quantization_status=QuantizationStatus.COMPRESSED,
    )
    return config.model_dump(mode="json", exclude_none=True)


def compress_weight_ct(weight: torch.Tensor, strategy: str = "channel") -> dict[str, torch.Tensor]:
    """Quantize one weight the way compressed-tensors does: {"weight": fp8, "weight_scale": float32}."""
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.utils import calculate_qparams

    scheme = preset_name_to_scheme("FP8_DYNAMIC" if strategy == "channel" else "FP8", ["Linear"])
    dense = weight.float()
    if strategy == "channel":
        low, high = dense.amin(dim=1, keepdim=True), dense.amax(dim=1, keepdim=True)
    else:
        low, high = dense.amin(), dense.amax()
    scale, zero_point = calculate_qparams(low, high, scheme.weights)
    state = {"weight": dense, "weight_scale": scale, "weight_zero_point": zero_point}
    return dict(FloatQuantizationCompressor.compress(state, scheme))
