"""The FP8 GPU path, tested with simulated GPU capabilities (no GPU here): kernel choice and a self-check
that can fail, the scaled_mm argument layouts, the Triton kernel (both FP8 decodings) in Triton's CPU
interpreter, loading an FP8 checkpoint into Fp8Linear layers, and what a kernel failure or a GPU fault
does to loading."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from chatbot.errors import PrecisionError
from chatbot.model import fp8_linear
from chatbot.model.device import DeviceInfo
from chatbot.model.fp8 import dequantize_block_fp8, quantize_block_fp8
from chatbot.model.fp8_linear import (
    Fp8DeviceFault,
    Fp8KernelUnavailable,
    Fp8Linear,
    KernelSpec,
    scaled_mm_arguments,
    scaled_mm_weight_scales,
    select_fp8_kernels,
)
from chatbot.model.loader import load_model

ROOT = Path(__file__).resolve().parents[2]
HOPPER = DeviceInfo.simulated_cuda((9, 0), "Simulated H100")


def reference_kernel(x, weight, scale_inv, block):
    """Dequantize, then an ordinary matmul: what every FP8 kernel must agree with."""
    return (x.float() @ dequantize_block_fp8(weight, scale_inv, block, torch.float32).t()).to(x.dtype)


def wrong_kernel(x, weight, scale_inv, block):
    return torch.zeros(x.shape[0], weight.shape[0], dtype=x.dtype)


def scale_blind_kernel(x, weight, scale_inv, block):
    """Uses one average scale for the whole weight: the mistake an easy self-check cannot see."""
    return (x.float() @ (weight.float() * scale_inv.float().mean()).t()).to(x.dtype)


def missing_kernel():
    raise ImportError("no such kernel here")


def spec(name, factory, kind="w8a16", prepare=None) -> KernelSpec:
    return KernelSpec(name, kind, False, factory, prepare)


SHAPES = [(384, 256), (256, 640)]


def select(*specs):
    return select_fp8_kernels(torch.device("cpu"), (128, 128), shapes=SHAPES, kernels=specs)


def test_first_kernel_passing_the_self_check_is_chosen() -> None:
    kernels, notes = select(
        spec("missing", missing_kernel),
        spec("wrong", lambda: wrong_kernel),
        spec("reference", lambda: reference_kernel),
    )
    assert kernels.decode.name == "reference" and kernels.prefill is None
    assert notes[0] == "missing: no such kernel here"
    assert notes[1].startswith("wrong: wrong results (error 100.0% of the largest output)")


def test_the_self_check_sees_a_kernel_that_ignores_block_scales() -> None:
    """Block magnitudes spread over 2^-6..2^6: averaging the scales is far off, on every shape."""
    with pytest.raises(Fp8KernelUnavailable, match="scale-blind: wrong results"):
        select(spec("scale-blind", lambda: scale_blind_kernel))


def test_any_exception_from_a_kernel_means_unavailable_with_its_reason() -> None:
    class CompilationError(Exception):  # what Triton raises derives from Exception, not RuntimeError
        pass

    def broken(x, weight, scale_inv, block):
        raise CompilationError("at 12:4: unsupported layout")

    def broken_factory():
        raise CompilationError("cannot build")

    kernels, notes = select(
        spec("broken", lambda: broken), spec("unbuildable", broken_factory), spec("reference", lambda: reference_kernel)
    )
    assert kernels.decode.name == "reference"
    assert notes == ["broken: CompilationError: at 12:4: unsupported layout", "unbuildable: cannot build"]


def test_a_gpu_fault_during_the_self_check_stops_instead_of_stepping_down() -> None:
    def faulting(x, weight, scale_inv, block):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(Fp8DeviceFault, match="illegal memory access"):
        select(spec("faulting", lambda: faulting), spec("reference", lambda: reference_kernel))


def test_a_w8a16_kernel_decodes_and_scaled_mm_serves_long_prompts(monkeypatch) -> None:
    monkeypatch.setattr(F, "scaled_mm", emulated_scaled_mm)
    kernels, _ = select(
        spec("torch-scaled-mm", lambda: fp8_linear._scaled_mm_kernel, "w8a8", scaled_mm_weight_scales),
        spec("reference", lambda: reference_kernel),
    )
    assert (kernels.decode.name, kernels.prefill.name) == ("reference", "torch-scaled-mm")
    weight = torch.randn(256, 256) * 0.05
    q, scale_inv = quantize_block_fp8(weight, scale_dtype=torch.float32)
    layer = Fp8Linear(256, 256, (128, 128), kernels)
    layer.weight, layer.weight_scale_inv = torch.nn.Parameter(q, False), torch.nn.Parameter(scale_inv, False)
    calls = []
    monkeypatch.setattr(F, "scaled_mm", lambda *a, **k: calls.append(a[0].shape[0]) or emulated_scaled_mm(*a, **k))
    layer(torch.randn(1, 256, dtype=torch.bfloat16))
    layer(torch.randn(kernels.prefill_min_rows, 256, dtype=torch.bfloat16))
    assert calls == [kernels.prefill_min_rows]  # decode did not go through scaled_mm


def test_no_working_kernel_lists_every_reason() -> None:
    with pytest.raises(Fp8KernelUnavailable) as caught:
        select(spec("missing", missing_kernel), spec("wrong", lambda: wrong_kernel))
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
        out = fp8_linear._scaled_mm_kernel(x, q, scaled_mm_weight_scales(scale_inv, (128, 128)), (128, 128))
        reference = reference_kernel(x, q, scale_inv, (128, 128)).float()
        assert out.shape == (rows, 384)
        cosine = F.cosine_similarity(out.float().flatten(), reference.flatten(), dim=0)
        assert cosine > 0.999  # activations are quantized to FP8 too: close, not exact


def test_scaled_mm_refuses_shapes_it_cannot_serve() -> None:
    q, scale_inv = quantize_block_fp8(torch.randn(300, 200))
    with pytest.raises(ValueError, match="multiples of 128"):
        scaled_mm_arguments(torch.randn(2, 200), q, scaled_mm_weight_scales(scale_inv, (128, 128)), (128, 128))


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def run_in_interpreter(script: str) -> None:
    """Run ``script`` with TRITON_INTERPRET=1 (Triton's CPU interpreter); it must print "ok"."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@needs_triton
def test_triton_kernels_match_the_reference_in_the_interpreter() -> None:
    """TRITON_INTERPRET=1 runs the real kernels on the CPU (FP16 activations: the interpreter lacks BF16).

    Both ways of decoding the FP8 byte: the hardware cast and the bit arithmetic older GPUs use, which
    must be exact for every finite e4m3 value; block magnitudes spread over 2^-6..2^6. Row counts up to
    16 run the retiled kernel (split-K, whole K blocks), more rows the general one; partial blocks at the
    edges (300 x 200) in both."""
    run_in_interpreter("""
import torch
from chatbot.model.fp8 import quantize_block_fp8, dequantize_block_fp8
from chatbot.model.fp8_linear import spread_block_weight
from chatbot.model.fp8_tiles import choose_tiles
from chatbot.model.fp8_triton import launch_kernels
g = torch.Generator().manual_seed(0)
finite = torch.arange(256, dtype=torch.uint8)
finite = finite[(finite & 0x7F) != 0x7F]  # every e4m3fn byte but NaN
weight = torch.zeros(2, 128, dtype=torch.uint8)
weight.view(-1)[: finite.numel()] = finite
weight = weight.view(torch.float8_e4m3fn)
cases = [(1, 384, 640), (7, 300, 200), (16, 256, 576), (37, 300, 200), (20, 256, 576)]
for decode in ("cast", "bits"):
    for rows in (16, 128):  # the retiled kernel, then the general one
        out = launch_kernels(torch.eye(128)[:rows].half(), weight, torch.ones(1, 1), (128, 128), decode=decode)
        assert torch.equal(out.float().t(), weight.float()[:, :rows]), (decode, rows)
    for rows, n, k in cases:
        w = spread_block_weight(n, k, (128, 128), g)
        x = torch.randn(rows, k, generator=g).half()
        q, s = quantize_block_fp8(w, scale_dtype=torch.float32)
        ref = x.float() @ dequantize_block_fp8(q, s, dtype=torch.float32).t()
        out = launch_kernels(x, q, s, (128, 128), decode=decode).float()
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        assert err < 2e-3, (decode, rows, n, k, err)
assert choose_tiles(1, 384, 640, (128, 128)).split_k == 2 and choose_tiles(37, 300, 200, (128, 128)).block_m == 64
print("ok")
""")


@needs_triton
def test_the_retiled_kernel_on_a_qwen3_layer_shape_with_split_k_in_the_interpreter() -> None:
    """down_proj of Qwen3-0.6B (N=1024, K=3072): 32 N tiles x 6 K slices; 1, 5 and 16 rows."""
    run_in_interpreter("""
import torch
from chatbot.model.fp8 import quantize_block_fp8, dequantize_block_fp8
from chatbot.model.fp8_linear import spread_block_weight
from chatbot.model.fp8_tiles import choose_tiles
from chatbot.model.fp8_triton import launch_kernels
assert choose_tiles(1, 1024, 3072, (128, 128)).split_k == 6
g = torch.Generator().manual_seed(0)
q, s = quantize_block_fp8(spread_block_weight(1024, 3072, (128, 128), g), scale_dtype=torch.float32)
dense = dequantize_block_fp8(q, s, dtype=torch.float32)
x = torch.randn(16, 3072, generator=g).half()
for rows in (1, 5, 16):
    ref = x[:rows].float() @ dense.t()
    out = launch_kernels(x[:rows], q, s, (128, 128)).float()
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 2e-3, rows
print("ok")
""")


@needs_triton
def test_the_fp8_operator_passes_opcheck_and_compiles_without_graph_breaks() -> None:
    """``torch.ops.chatbot.fp8_block_matmul`` (triton_op): schema, fake tensors, autograd registration and
    AOT dispatch with dynamic shapes hold on the CPU; an Fp8Linear served by it compiles with fullgraph=True
    (a graph break would raise) and gives what eager gives."""
    from chatbot.model.fp8_triton import fp8_block_matmul

    generator = torch.Generator().manual_seed(0)
    q, scale_inv = quantize_block_fp8(torch.randn(384, 640, generator=generator) * 0.05, scale_dtype=torch.float32)
    for rows in (1, 5, 37):
        x = torch.randn(rows, 640, generator=generator).to(torch.bfloat16)
        for bits in (False, True):
            torch.library.opcheck(fp8_block_matmul, (x, q.view(torch.uint8), scale_inv, 128, 128, bits))
    from chatbot.model.fp8_triton import w8a16_block_matmul

    kernels = fp8_linear.Fp8Kernels(fp8_linear.Fp8Kernel("triton-op", w8a16_block_matmul, compiled=True))
    layer = Fp8Linear(640, 384, (128, 128), kernels)
    layer.weight, layer.weight_scale_inv = torch.nn.Parameter(q, False), torch.nn.Parameter(scale_inv, False)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 640, generator=generator).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(compiled(x), layer(x))
        reference = reference_kernel(x, q, scale_inv, (128, 128))
        assert torch.allclose(layer(x).float(), reference.float(), rtol=1e-2, atol=1e-2)


def test_simulated_hopper_without_a_working_kernel_falls_back_to_bf16(random_fp8) -> None:
    loaded = load_model(str(random_fp8), device_info=HOPPER)
    decision = loaded.precision
    assert decision.attempts[0].mode == "fp8" and not decision.attempts[0].ok
    assert "no working FP8 matmul kernel" in decision.attempts[0].detail
    assert decision.mode == "bf16" and decision.label == "BF16 fallback"  # BF16 before FP16 where it is native
    assert "after FP8 failed" in decision.reason
    # the GPU layout: one dtype for every tensor, embeddings and norms included
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_simulated_hopper_with_a_working_kernel_runs_fp8(random_fp8, monkeypatch) -> None:
    monkeypatch.setattr(fp8_linear, "KERNELS", [spec("reference", lambda: reference_kernel)])
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


def test_simulated_ampere_keeps_fp8_weights_with_the_bit_decoding_kernel(random_fp8, monkeypatch) -> None:
    """Below 8.9 only kernels without FP8 hardware are tried; the badge says weight-only."""
    hardware_only = KernelSpec("triton", "w8a16", True, lambda: reference_kernel)
    monkeypatch.setattr(fp8_linear, "KERNELS", [hardware_only, spec("triton-bits", lambda: reference_kernel)])
    decision = load_model(str(random_fp8), device_info=DeviceInfo.simulated_cuda((8, 6))).precision
    assert decision.mode == "fp8" and decision.label == "FP8 weight-only"
    assert decision.fp8_kernel == "triton-bits"
    assert decision.reason.startswith("FP8 weight-only: GPU compute capability 8.6 < 8.9 has no FP8 tensor cores")


def test_fp8_self_check_runs_before_any_weight_is_loaded(random_fp8, monkeypatch) -> None:
    monkeypatch.setattr(fp8_linear, "KERNELS", [spec("wrong", lambda: wrong_kernel)])
    decision = load_model(str(random_fp8), device_info=HOPPER).precision
    assert decision.attempts[0].detail.startswith("FP8 failed: no working FP8 matmul kernel (wrong: wrong results")


def test_a_gpu_fault_stops_loading_with_how_to_restart(random_fp8, monkeypatch) -> None:
    def faulting(x, weight, scale_inv, block):
        raise RuntimeError("CUDA error: unspecified launch failure")

    monkeypatch.setattr(fp8_linear, "KERNELS", [spec("faulting", lambda: faulting)])
    with pytest.raises(PrecisionError, match="no other precision was tried") as caught:
        load_model(str(random_fp8), device_info=HOPPER)
    assert "--precision bf16" in caught.value.fix


def test_after_loading_one_real_layer_is_checked_against_its_dequantized_weights(random_fp8, monkeypatch) -> None:
    from chatbot.model.loader import ProbeError, check_fp8_layer

    monkeypatch.setattr(fp8_linear, "KERNELS", [spec("reference", lambda: reference_kernel)])
    model = load_model(str(random_fp8), device_info=HOPPER).model
    check_fp8_layer(model, torch.bfloat16)  # agrees
    layer = next(m for m in model.modules() if isinstance(m, Fp8Linear))
    layer.kernels = fp8_linear.Fp8Kernels(fp8_linear.Fp8Kernel("scale-blind", scale_blind_kernel))
    layer.weight_scale_inv.data[0, 0] *= 64  # one block far from the others: a scale-blind kernel now errs
    with pytest.raises(ProbeError, match="scale-blind disagrees with the dequantized weights"):
        check_fp8_layer(model, torch.bfloat16)


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
    monkeypatch.setattr(fp8_linear, "KERNELS", [spec("reference", lambda: reference_kernel)])
    with pytest.raises(CheckpointError, match="holds NaN"):
        load_model(str(folder), device_info=HOPPER)


def test_loading_fp8_loads_no_hub_kernel_and_opens_no_connection(random_fp8) -> None:
    """The FP8 path with the real kernel list (simulated Hopper): no hub kernel is asked for, no socket opened.

    transformers' fine-grained FP8 kernel downloaded its code from the hub when first called (offline it
    waited on the hub's timeouts). transformers imports the ``kernels`` package itself; what must not
    happen is a kernel load from the hub, or any connection or name lookup (an audit hook sees those)."""
    script = """
import sys
attempts = []
network = ("socket.connect", "socket.getaddrinfo")
sys.addaudithook(lambda event, args: attempts.append(event) if event in network else None)
import kernels
import transformers.integrations.finegrained_fp8 as finegrained_fp8
import transformers.integrations.hub_kernels as hub_kernels
def refuse(*args, **kwargs):
    attempts.append("hub kernel")
    raise ImportError("hub kernels are not allowed here")
for module, name in ((kernels, "get_kernel"), (hub_kernels, "lazy_load_kernel"), (finegrained_fp8, "lazy_load_kernel")):
    setattr(module, name, refuse)
from chatbot.model.device import DeviceInfo
from chatbot.model.loader import load_model
loaded = load_model(sys.argv[1], device_info=DeviceInfo.simulated_cuda((9, 0), "Simulated H100"), precision="auto")
print(loaded.precision.attempts[0].mode, attempts)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = subprocess.run(
        [sys.executable, "-c", script, str(random_fp8)], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "fp8 []", result.stdout  # FP8 was tried (no GPU here: it then steps down)


def test_scaled_mm_as_the_only_working_kernel_decodes_with_its_scale_layout(monkeypatch) -> None:
    """An H100 without a working Triton, simulated: decode goes through scaled_mm, which needs the block
    scales padded and transposed (``scaled_mm_weight_scales``). The raw [N/128, K/128] scales made the
    post-load layer check fail and the model fall back although a working FP8 kernel existed."""
    from chatbot.model.loader import check_fp8_layer

    monkeypatch.setattr(F, "scaled_mm", emulated_scaled_mm)
    scaled_mm = KernelSpec(
        "torch-scaled-mm", "w8a8", True, lambda: fp8_linear._scaled_mm_kernel, scaled_mm_weight_scales
    )
    kernels, _ = select_fp8_kernels(torch.device("cpu"), (128, 128), shapes=SHAPES, kernels=[scaled_mm])
    assert kernels.decode.name == "torch-scaled-mm" and kernels.prefill is None
    generator = torch.Generator().manual_seed(1)
    q, scale_inv = quantize_block_fp8(
        fp8_linear.spread_block_weight(384, 640, (128, 128), generator), scale_dtype=torch.float32
    )
    layer = Fp8Linear(640, 384, (128, 128), kernels)
    layer.weight, layer.weight_scale_inv = torch.nn.Parameter(q, False), torch.nn.Parameter(scale_inv, False)
    check_fp8_layer(torch.nn.Sequential(layer), torch.bfloat16)  # the loader's check, before prepare_scales
    layer.prepare_scales()
    for rows in (1, 16, 600):
        x = torch.randn(rows, 640, generator=generator, dtype=torch.bfloat16)
        reference = fp8_linear.reference_output("w8a8", x, q, scale_inv, (128, 128))
        out = layer(x).float()
        assert ((out - reference).abs().max() / reference.abs().max()) < 0.02


def test_every_compiled_variant_of_each_layer_shape_runs_at_load_simulated(random_fp8, monkeypatch) -> None:
    """A Triton kernel compiles once per tile choice and class of row count (1, a multiple of 16, other).
    A fake compiled kernel records the rows each layer shape ran at load: every variant that any batch or
    prompt chunk can reach was among them, so none compiles mid-serving (a stall, or a failed request)."""
    from chatbot.model.fp8_tiles import variant_key

    seen: dict[tuple[int, int], set[int]] = {}

    def recording_kernel(x, weight, scale_inv, block):
        seen.setdefault(tuple(weight.shape), set()).add(x.shape[0])
        return reference_kernel(x, weight, scale_inv, block)

    compiled = KernelSpec("fake-triton", "w8a16", True, lambda: recording_kernel, compiled=True)
    monkeypatch.setattr(fp8_linear, "KERNELS", [compiled])
    loaded = load_model(str(random_fp8), device_info=HOPPER)
    assert loaded.precision.fp8_kernel == "fake-triton"
    shapes = {(m.out_features, m.in_features) for m in loaded.model.modules() if isinstance(m, Fp8Linear)}
    for n, k in shapes:
        reachable = {variant_key(rows, n, k, (128, 128)) for rows in range(1, fp8_linear.WARM_MAX_ROWS + 1)}
        warmed = {variant_key(rows, n, k, (128, 128)) for rows in seen[(n, k)]}
        assert reachable <= warmed, (n, k, sorted(seen[(n, k)]))
    assert any(2 <= rows < 16 for rows in seen[next(iter(shapes))])  # a batch of 2..15 rows was among them


def test_decode_tiles_keep_an_h100_busy_on_every_qwen3_layer_shape() -> None:
    """M <= 16: each 0.6B shape (q/k/v and gate/up packed or not) gets >= 128 programs (132 SMs), tiles
    inside one 128-row scale block and at least two whole K blocks per program."""
    from chatbot.model.fp8_tiles import SMALL_M_TILES, choose_tiles, small_m_tiles

    for (n, k), tiles in SMALL_M_TILES.items():
        assert choose_tiles(16, n, k, (128, 128)) == tiles and tiles.small_m
        assert tiles.programs(1, n) >= 128 and 128 % tiles.block_n == 0 and tiles.block_k == 128
        assert (k // 128) % tiles.split_k == 0 and k // 128 // tiles.split_k >= 2
    assert small_m_tiles(1024, 4096).programs(1, 1024) >= 128  # an unknown shape: the same rule
    assert not choose_tiles(17, 1024, 1024, (128, 128)).small_m
    assert not choose_tiles(1, 1024, 1024, (64, 96)).small_m  # other block sizes: the general kernel
