"""The native FP8 path, tested with simulated GPU capabilities (no GPU here): kernel choice and
self-check, the scaled_mm argument layouts, the Triton kernel in Triton's CPU interpreter, and
loading an FP8 checkpoint into Fp8Linear layers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from chatbot.model import fp8_linear
from chatbot.model.device import DeviceInfo
from chatbot.model.fp8 import dequantize_block_fp8, quantize_block_fp8
from chatbot.model.fp8_linear import Fp8KernelUnavailable, Fp8Linear, scaled_mm_arguments, select_fp8_kernel
from chatbot.model.loader import load_model

ROOT = Path(__file__).resolve().parent.parent
HOPPER = DeviceInfo.simulated_cuda((9, 0), "Simulated H100")


def reference_kernel(x, weight, scale_inv, block):
    """Dequantize, then an ordinary matmul: what every FP8 kernel must agree with."""
    return (x.float() @ dequantize_block_fp8(weight, scale_inv, block, torch.float32).t()).to(x.dtype)


def wrong_kernel(x, weight, scale_inv, block):
    return torch.zeros(x.shape[0], weight.shape[0], dtype=x.dtype)


def missing_kernel():
    raise ImportError("no such kernel here")


def test_first_kernel_passing_the_self_check_is_chosen() -> None:
    kernel, notes = select_fp8_kernel(
        torch.device("cpu"),
        (128, 128),
        {"missing": missing_kernel, "wrong": lambda: wrong_kernel, "reference": lambda: reference_kernel},
    )
    assert kernel.name == "reference"
    assert notes[0] == "missing: no such kernel here"
    assert notes[1].startswith("wrong: wrong results (cosine similarity")


def test_no_working_kernel_lists_every_reason() -> None:
    with pytest.raises(Fp8KernelUnavailable) as caught:
        select_fp8_kernel(torch.device("cpu"), (128, 128), {"missing": missing_kernel, "wrong": lambda: wrong_kernel})
    assert "missing: no such kernel here" in str(caught.value) and "wrong: wrong results" in str(caught.value)


def emulated_scaled_mm(a, b, scale_a, recipe_a, scale_b, recipe_b, output_dtype=torch.bfloat16, **_):
    """CPU stand-in for cuBLAS block-scaled FP8 GEMM that enforces its documented argument layouts."""
    rows, inner = a.shape
    outer = b.shape[1]
    assert a.dtype == b.dtype == torch.float8_e4m3fn
    assert recipe_a == F.ScalingType.BlockWise1x128 and recipe_b == F.ScalingType.BlockWise128x128
    assert rows % 16 == 0, "leading dimension padded"
    assert tuple(scale_a.shape) == (rows, inner // 128) and scale_a.stride(0) == 1, "1x128 scales outer-dim-major"
    k_blocks = -(-inner // 128)
    assert tuple(scale_b.shape) == (-(-k_blocks // 4) * 4, outer // 128), "128x128 scales [L4, N/128]"
    assert b.stride(0) == 1, "B is the transposed (column-major) weight"
    a_dense = a.float().view(rows, inner // 128, 128) * scale_a.unsqueeze(-1)
    b_dense = b.t().float() * scale_b.t()[:, :k_blocks].repeat_interleave(128, 0).repeat_interleave(128, 1)
    return (a_dense.view(rows, inner) @ b_dense.t()).to(output_dtype)


def test_scaled_mm_kernel_passes_arguments_in_the_cublas_layout(monkeypatch) -> None:
    monkeypatch.setattr(F, "scaled_mm", emulated_scaled_mm)
    weight = torch.randn(384, 640, generator=torch.Generator().manual_seed(0)) * 0.05  # K blocks = 5 -> padded to 8
    q, scale_inv = quantize_block_fp8(weight, scale_dtype=torch.float32)
    for rows in (1, 7, 33):
        x = torch.randn(rows, 640, dtype=torch.bfloat16)
        out = fp8_linear._scaled_mm_kernel(x, q, scale_inv, (128, 128))
        reference = reference_kernel(x, q, scale_inv, (128, 128)).float()
        assert out.shape == (rows, 384)
        cosine = F.cosine_similarity(out.float().flatten(), reference.flatten(), dim=0)
        assert cosine > 0.999  # activations are quantized to FP8 too: close, not exact


def test_scaled_mm_refuses_shapes_it_cannot_serve() -> None:
    q, scale_inv = quantize_block_fp8(torch.randn(300, 200))
    with pytest.raises(ValueError, match="multiples of 128"):
        scaled_mm_arguments(torch.randn(2, 200), q, scale_inv, (128, 128))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernel_matches_the_reference_in_the_interpreter() -> None:
    """TRITON_INTERPRET=1 runs the real kernel on the CPU (FP16 activations: the interpreter lacks BF16)."""
    script = """
import torch
from chatbot.model.fp8 import quantize_block_fp8, dequantize_block_fp8
from chatbot.model.fp8_triton import w8a16_block_matmul
g = torch.Generator().manual_seed(0)
for rows, n, k in [(1, 384, 256), (37, 300, 200), (20, 256, 576)]:
    w = torch.randn(n, k, generator=g) * 0.05
    x = torch.randn(rows, k, generator=g).half()
    q, s = quantize_block_fp8(w, scale_dtype=torch.float32)
    ref = x.float() @ dequantize_block_fp8(q, s, dtype=torch.float32).t()
    out = w8a16_block_matmul(x, q, s, (128, 128)).float()
    err = ((out - ref).abs().max() / ref.abs().max()).item()
    assert err < 2e-3, (rows, n, k, err)
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_simulated_hopper_without_a_working_kernel_falls_back_to_fp16(random_fp8) -> None:
    loaded = load_model(str(random_fp8), device_info=HOPPER)
    decision = loaded.precision
    assert decision.attempts[0].mode == "fp8" and not decision.attempts[0].ok
    assert "no working FP8 matmul kernel" in decision.attempts[0].detail
    assert decision.mode == "fp16" and decision.label == "FP16 fallback"
    assert "after FP8 failed" in decision.reason
    # the GPU layout: one dtype for every tensor, embeddings and norms included
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float16}


def test_simulated_hopper_with_a_working_kernel_runs_fp8(random_fp8, monkeypatch) -> None:
    monkeypatch.setattr(fp8_linear, "KERNEL_FACTORIES", {"reference": lambda: reference_kernel})
    fp8 = load_model(str(random_fp8), device_info=HOPPER)
    assert fp8.precision.mode == "fp8" and fp8.precision.label == "FP8 native"
    assert fp8.precision.fp8_kernel == "reference"
    assert fp8.precision.reason.startswith("FP8 native: GPU compute capability 9.0 >= 8.9")
    layers = [m for m in fp8.model.modules() if isinstance(m, Fp8Linear)]
    assert len(layers) == 7 * 2  # every projection of both layers
    assert all(m.weight.dtype == torch.float8_e4m3fn and m.weight_scale_inv.dtype == torch.float32 for m in layers)
    fp16 = load_model(str(random_fp8), device_info=HOPPER, precision="fp16")
    ids = fp8.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.inference_mode():
        a, b = fp8.model(ids).logits.float(), fp16.model(ids).logits.float()
    assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999
    assert fp8.weights_bytes < fp16.weights_bytes  # the tiny model is mostly embeddings; see bench for 0.6B


def test_fp8_self_check_runs_before_any_weight_is_loaded(random_fp8, monkeypatch) -> None:
    monkeypatch.setattr(fp8_linear, "KERNEL_FACTORIES", {"wrong": lambda: wrong_kernel})
    decision = load_model(str(random_fp8), device_info=HOPPER).precision
    assert decision.attempts[0].detail.startswith("FP8 failed: no working FP8 matmul kernel (wrong: wrong results")


def test_nan_in_fp8_weights_kept_as_fp8_is_refused(random_fp8, tmp_path, monkeypatch) -> None:
    """In the native FP8 layout the weights are not dequantized, so NaN bytes must be caught as they are."""
    import shutil

    from safetensors.torch import load_file, save_file

    from chatbot.errors import CheckpointError

    folder = tmp_path / "model"
    shutil.copytree(random_fp8, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    raw = tensors[name].view(torch.uint8).clone()
    raw[0, :4] = 0x7F  # e4m3fn NaN
    tensors[name] = raw.view(torch.float8_e4m3fn)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    monkeypatch.setattr(fp8_linear, "KERNEL_FACTORIES", {"reference": lambda: reference_kernel})
    with pytest.raises(CheckpointError, match="holds NaN"):
        load_model(str(folder), device_info=HOPPER)
