"""Write checkpoints: plain, Qwen block-FP8 or compressed-tensors FP8, single file or sharded.

``python -m chatbot quantize SRC OUT`` converts a BF16/FP16 Qwen3 checkpoint (a fine-tune, say)
to Qwen's block-FP8 format; ``make-model`` writes its generated weights through the same code.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import ChatbotError
from ..model import fp8
from ..model.checkpoint import FileHandles, inspect_checkpoint, resolve_checkpoint
from ..model.formats import (
    PROJECTION_RE,
    block_fp8_quantization_config,
    compress_weight_ct,
    compressed_tensors_quantization_config,
)

log = logging.getLogger(__name__)
OUTPUT_FORMATS = ("fp8", "compressed-tensors", "bf16")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")
SKIP_FILES = ("model.safetensors.index.json", "config.json")


def quantize_tensors(
    tensors: Iterable[tuple[str, torch.Tensor]], fmt: str, block: tuple[int, int] = fp8.DEFAULT_BLOCK
) -> Iterator[tuple[str, torch.Tensor]]:
    """Turn (name, dense tensor) pairs into the tensors that ``fmt`` stores.

    The projections of every decoder layer become FP8 with their scales; embeddings, norms and
    ``lm_head`` stay BF16, as in Qwen's own FP8 checkpoints.
    """
    for name, tensor in tensors:
        if fmt == "bf16" or not PROJECTION_RE.match(name):
            yield name, tensor.to(torch.bfloat16).contiguous()
        elif fmt == "fp8":
            weight, scale_inv = fp8.quantize_block_fp8(tensor, block)
            yield name, weight
            yield name + "_scale_inv", scale_inv
        elif fmt == "compressed-tensors":
            for suffix, value in compress_weight_ct(tensor).items():
                yield name.removesuffix("weight") + suffix, value.contiguous()
        else:
            raise ChatbotError(f"Unknown output format {fmt!r}.", fix=f"Use one of {', '.join(OUTPUT_FORMATS)}.")


def quantization_config(fmt: str, block: tuple[int, int] = fp8.DEFAULT_BLOCK) -> dict[str, Any] | None:
    if fmt == "fp8":
        return block_fp8_quantization_config(block)
    if fmt == "compressed-tensors":
        return compressed_tensors_quantization_config()
    return None


def write_checkpoint(out: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any], shards: int = 1) -> None:
    """Save ``tensors`` as one file or ``shards`` files with an index, plus config.json."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.safetensors"), out / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)
    names = list(tensors)
    if shards <= 1:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        target = total / shards
        groups: list[list[str]] = [[]]
        size = 0
        for name in names:
            nbytes = tensors[name].numel() * tensors[name].element_size()
            if groups[-1] and size + nbytes > target and len(groups) < shards:
                groups.append([])
                size = 0
            groups[-1].append(name)
            size += nbytes
        while len(groups) < shards:  # tiny models: split the largest group so the count matches
            largest = max(groups, key=len)
            half = len(largest) // 2
            groups.insert(groups.index(largest) + 1, largest[half:])
            del largest[half:]
        weight_map = {}
        for i, group in enumerate(groups, start=1):
            filename = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            save_file({n: tensors[n] for n in group}, str(out / filename), metadata={"format": "pt"})
            weight_map.update({n: filename for n in group})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def quantize_checkpoint(source: str, out: Path, fmt: str = "fp8", shards: int = 1) -> Path:
    """Convert an unquantized Qwen3 checkpoint (folder or hub id) to ``fmt``; tokenizer files are copied.

    Raises:
        ChatbotError: the source is already quantized, or cannot be read.
    """
    src = resolve_checkpoint(source)
    info = inspect_checkpoint(src, source)
    if info.format.is_fp8:
        raise ChatbotError(
            f"{src} is already quantized ({info.format.describe()}).", fix="Pass the BF16/FP16 checkpoint instead."
        )
    if out.resolve() == src.resolve():
        raise ChatbotError("The output folder is the source folder.", fix="Choose a new folder for the FP8 checkpoint.")
    with FileHandles() as files:
        dense = ((name, info.read(name, files)) for name in info.tensors)
        tensors = dict(quantize_tensors(dense, fmt))
    config = dict(info.config)
    qcfg = quantization_config(fmt)
    if qcfg:
        config["quantization_config"] = qcfg
    config["torch_dtype"] = "bfloat16"
    write_checkpoint(out, tensors, config, shards)
    for item in src.iterdir():
        if item.is_file() and item.name not in SKIP_FILES and not item.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(item, out / item.name)
    log.info("Wrote %s checkpoint to %s", fmt, out)
    return out
