"""On a real CUDA GPU (skipped without one): the FP8 kernels, the precision the loader picks, generation.

Run on a GPU machine with ``.venv/bin/python -m pytest -m gpu tests/engine/test_gpu.py -q`` (or ``tests/gpu_report.sh``,
which also runs the benchmark and keeps its figures).
"""

from __future__ import annotations

import pytest
import torch

from chatbot.model.device import detect_device
from chatbot.model.fp8 import dequantize_block_fp8, quantize_block_fp8
from chatbot.model.fp8_linear import KERNELS, reference_output, self_check, spread_block_weight
from chatbot.model.loader import load_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none"),
]

QWEN3_06B_SHAPES = [(2048, 1024), (1024, 1024), (1024, 2048), (3072, 1024), (1024, 3072)]  # (out, in) per projection


def gpu():
    return detect_device("cuda")


@pytest.mark.parametrize("spec", KERNELS, ids=lambda spec: spec.name)
def test_each_kernel_passes_or_is_refused_with_a_reason_on_the_real_layer_shapes(spec) -> None:
    info = gpu()
    if spec.needs_fp8_hardware and not info.has_fp8:
        pytest.skip(f"{spec.name} needs compute capability >= 8.9; this GPU is {info.capability_text}")
    try:
        kernel = spec.build()
    except Exception as exc:
        pytest.skip(f"{spec.name} is not available here: {exc}")
    dtype = torch.bfloat16 if info.has_bf16 else torch.float16
    problem = self_check(kernel, torch.device("cuda"), (128, 128), QWEN3_06B_SHAPES, dtype)
    if spec.name in ("triton", "triton-bits"):  # ours: they must work on every GPU that has Triton
        assert problem is None, problem


def test_bit_decoding_kernel_is_exact_on_every_finite_fp8_byte() -> None:
    from chatbot.model.fp8_triton import w8a16_block_matmul

    finite = torch.arange(256, dtype=torch.uint8)
    finite = finite[(finite & 0x7F) != 0x7F]
    weight = torch.zeros(2, 128, dtype=torch.uint8)
    weight.view(-1)[: finite.numel()] = finite
    weight = weight.view(torch.float8_e4m3fn).cuda()
    eye, scale = torch.eye(128, device="cuda").half(), torch.ones(1, 1, device="cuda")
    out = w8a16_block_matmul(eye, weight, scale, (128, 128), "bits")
    assert torch.equal(out.float().t().cpu(), weight.float().cpu())


def test_triton_kernel_runs_on_the_tensors_gpu_not_the_current_one() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    from chatbot.model.fp8_triton import w8a16_block_matmul

    generator = torch.Generator().manual_seed(0)
    q, scale = quantize_block_fp8(spread_block_weight(256, 256, (128, 128), generator), scale_dtype=torch.float32)
    x = torch.randn(4, 256, generator=generator).half()
    reference = reference_output("w8a16", x, q, scale, (128, 128))
    with torch.cuda.device(0):
        out = w8a16_block_matmul(x.to("cuda:1"), q.to("cuda:1"), scale.to("cuda:1"), (128, 128), "bits")
    assert out.device == torch.device("cuda:1")
    assert ((out.float().cpu() - reference).abs().max() / reference.abs().max()) < 0.02


def test_the_fp8_checkpoint_loads_in_fp8_and_generates(random_fp8) -> None:
    info = gpu()
    loaded = load_model(str(random_fp8), device="cuda")
    decision = loaded.precision
    assert decision.mode == "fp8", decision.attempts
    assert decision.label == ("FP8 native" if info.has_fp8 else "FP8 weight-only")
    ids = torch.tensor([[1, 2, 3, 4]], device="cuda")
    with torch.inference_mode():
        logits = loaded.model(input_ids=ids).logits
    assert torch.isfinite(logits).all()


def test_fp8_weights_take_at_most_0_65x_of_bf16(make_checkpoint) -> None:
    if not gpu().has_bf16:
        pytest.skip("no native BF16 on this GPU")
    folder = make_checkpoint("fp8", size="0.6b")
    fp8 = load_model(str(folder), device="cuda")
    fp8_bytes = fp8.weights_bytes
    del fp8
    torch.cuda.empty_cache()
    bf16 = load_model(str(folder), device="cuda", precision="bf16")
    assert fp8_bytes <= 0.65 * bf16.weights_bytes, (fp8_bytes, bf16.weights_bytes)


def test_dequantized_reference_is_what_the_fp8_layers_compute(random_fp8) -> None:
    from chatbot.model.fp8_linear import Fp8Linear

    loaded = load_model(str(random_fp8), device="cuda")
    layer = next(m for m in loaded.model.modules() if isinstance(m, Fp8Linear))
    x = torch.randn(16, layer.in_features, device="cuda", dtype=loaded.precision.dtype)
    dense = dequantize_block_fp8(layer.weight, layer.weight_scale_inv, layer.block, torch.float32)
    reference = x.float() @ dense.t()
    error = (layer(x).float() - reference).abs().max() / reference.abs().max()
    assert error < 0.02


def test_the_0_6b_fp8_model_packs_gate_and_up_and_matches_its_dequantized_self(make_checkpoint) -> None:
    from chatbot.model.fp8_packed import PackedFp8MLP

    folder = make_checkpoint("fp8", size="0.6b")
    loaded = load_model(str(folder), device="cuda")
    assert loaded.precision.mode == "fp8", loaded.precision.attempts
    mlps = [m for m in loaded.model.modules() if isinstance(m, PackedFp8MLP)]
    assert len(mlps) == loaded.model.config.num_hidden_layers
    layer = mlps[0].gate_up_proj
    for rows in (1, 4, 16, 64):
        x = torch.randn(rows, layer.in_features, device="cuda", dtype=loaded.precision.dtype)
        dense = dequantize_block_fp8(layer.weight, layer.weight_scale_inv, layer.block, torch.float32)
        reference = x.float() @ dense.t()
        assert ((layer(x).float() - reference).abs().max() / reference.abs().max()) < 0.02, rows
