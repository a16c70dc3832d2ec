"""The int8 dot-product kernel: every instruction set against an emulation of its arithmetic and against
FP32, on Gaussian and outlier-channel inputs, one row and batches; the fallback without a compiler."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from chatbot.model import cpu_int8, cpu_int8_dot
from chatbot.model.cpu_int8 import activation_error_bound, dequantize, quantize_per_channel, select_int8_kernel
from chatbot.model.cpu_int8_dot import KernelBuildError


def _available() -> tuple[str, ...]:
    try:
        return cpu_int8_dot.supported_isas({})
    except KernelBuildError as exc:
        pytest.skip(f"the kernel cannot be built here: {exc}")


def kernel_for(isa: str) -> cpu_int8.KernelFn:
    if isa not in _available():
        pytest.skip(f"this CPU lacks {isa}")
    return cpu_int8_dot.dot_kernel(isa)


def emulated(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The kernel's arithmetic in float64: x rounded to int8 per block of 32 (step max|block| / 127, ties to
    even), integer dot products per block, each scaled by its block's step, the row's sum by its scale."""
    rows, columns = x.shape
    blocks = x.float().reshape(rows, columns // 32, 32)
    step = blocks.abs().amax(-1, keepdim=True) / 127
    inverse = torch.where(step > 0, 1 / step, torch.zeros_like(step))
    xq = torch.round(blocks * inverse).clamp(-127, 127).double()
    weights = q.double().reshape(q.shape[0], columns // 32, 32)
    per_block = torch.einsum("mbk,nbk->mnb", xq, weights)
    return (per_block * step.double().squeeze(-1)[:, None, :]).sum(-1) * scale.double()


def inputs(kind: str, rows: int, columns: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(rows, columns, generator=generator)
    if kind == "outliers":  # a few channels far larger than the rest, as in trained models' hidden states
        x[:, 3::41] *= 80
    return x


@pytest.mark.parametrize("isa", list(cpu_int8_dot.ISAS))
@pytest.mark.parametrize("kind", ["gaussian", "outliers"])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 16])
@pytest.mark.parametrize("shape", [(96, 64), (37, 96), (301, 1024)])  # 96 = 64 + a half step; 37, 301 odd
def test_each_instruction_set_computes_the_q8_arithmetic_within_its_bound(isa, kind, rows, shape) -> None:
    fn = kernel_for(isa)
    generator = torch.Generator().manual_seed(rows * 1000 + shape[0])
    weight = torch.randn(*shape, generator=generator)
    weight[:, : shape[1] // 3] *= 16  # columns of different magnitudes
    q, scale, _ = quantize_per_channel(weight)
    x = inputs(kind, rows, shape[1], generator)
    with torch.inference_mode():
        out = fn(x, q, scale)
    assert out.dtype == torch.float32 and out.shape == (rows, shape[0])
    reference = F.linear(x, dequantize(q, scale, torch.float32))
    largest = float(reference.abs().max())
    # Exactly the arithmetic described, up to FP32 rounding of the sums.
    assert float((out.double() - emulated(x, q, scale)).abs().max()) <= 1e-5 * largest
    # Against FP32: within the bound of rounding the activations.
    assert bool(((out - reference).abs() <= activation_error_bound(x, q, scale) * 1.001 + 1e-5 * largest).all())
    if kind == "gaussian":
        assert float((out - reference).abs().max()) <= cpu_int8.SELF_CHECK_MAX_ERROR * largest


@pytest.mark.parametrize("isa", list(cpu_int8_dot.ISAS))
def test_a_row_gets_the_same_bits_alone_and_in_any_batch(isa) -> None:
    fn = kernel_for(isa)
    generator = torch.Generator().manual_seed(5)
    q, scale, _ = quantize_per_channel(torch.randn(203, 160, generator=generator))
    x = torch.randn(16, 160, generator=generator)
    with torch.inference_mode():
        alone = fn(x[6:7].clone(), q, scale)[0]
        for batch, index in ((x[5:7], 1), (x[:7], 6), (x, 6)):  # 2, 7 and 16 rows
            assert torch.equal(fn(batch, q, scale)[index], alone)


def test_the_instruction_sets_agree_and_views_and_bf16_inputs_work() -> None:
    isas = _available()
    generator = torch.Generator().manual_seed(6)
    stacked, scales, _ = quantize_per_channel(torch.randn(300, 256, generator=generator))
    q, scale = stacked[100:200], scales[100:200]  # a view into a stacked matrix, as the decode step keeps them
    x = torch.randn(4, 512, generator=generator)[:, ::2]  # not contiguous
    with torch.inference_mode():
        results = [cpu_int8_dot.dot_kernel(isa)(x, q, scale) for isa in isas]
        bf16 = cpu_int8_dot.dot_kernel(isas[0])(x.bfloat16(), q, scale)
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(results[0], emulated(x, q, scale).float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(bf16, emulated(x.bfloat16(), q, scale).float(), rtol=1e-5, atol=1e-4)


def test_widths_it_cannot_take_are_refused_and_the_next_kernel_serves() -> None:
    fn = cpu_int8_dot.dot_kernel(_available()[0])
    with pytest.raises(RuntimeError, match="multiple of 32"):
        fn(torch.randn(1, 40), torch.zeros(8, 40, dtype=torch.int8), torch.ones(8))
    select_int8_kernel.cache_clear()
    try:
        kernel = select_int8_kernel(((8, 40),))
        assert kernel.name != "dot" and "dot:" in kernel.describe()
    finally:
        select_int8_kernel.cache_clear()


def test_the_instruction_set_follows_the_cpu_and_the_settings() -> None:
    available = _available()
    assert cpu_int8_dot.chosen_isa({}) == available[0]
    assert cpu_int8_dot.chosen_isa({"ATEN_CPU_CAPABILITY": "avx2"}) == "avx2"  # as llama.cpp's AVX2 build
    assert cpu_int8_dot.chosen_isa({"QWEN_INT8_ISA": "avx2"}) == "avx2"
    with pytest.raises(ValueError, match="QWEN_INT8_ISA: input should be"):
        cpu_int8_dot.chosen_isa({"QWEN_INT8_ISA": "sse2"})
    if "avx512-vnni" in available:
        with pytest.raises(KernelBuildError, match="runs only avx2"):
            cpu_int8_dot.chosen_isa({"QWEN_INT8_ISA": "avx512-vnni", "ATEN_CPU_CAPABILITY": "avx2"})


def test_the_kernel_runs_on_all_of_torchs_threads() -> None:
    """Built with OpenMP, the library's parallel loops use torch's threads (without it they ran on one: the
    INT8 products took the same time on two cores as on one). Counts threads, not time: true on one core too."""
    _available()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.ops.qwen_int8.team_size() == 2
        torch.set_num_threads(1)
        assert torch.ops.qwen_int8.team_size() == 1
    finally:
        torch.set_num_threads(before)


def test_the_cache_folder_follows_the_environment(tmp_path) -> None:
    assert cpu_int8_dot.cache_dir({"QWEN_KERNEL_CACHE": str(tmp_path)}) == tmp_path
    assert cpu_int8_dot.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "qwen3-chat" / "kernels"
    assert cpu_int8_dot.compiler({"CXX": "clang++"}) == "clang++"


def test_without_a_compiler_the_build_says_what_to_install(tmp_path) -> None:
    with pytest.raises(KernelBuildError, match=r"no C\+\+ compiler .* install g\+\+"):
        cpu_int8_dot.build_library(tmp_path, "/nonexistent/c++")
    assert not any(tmp_path.iterdir())


NO_COMPILER = """
import sys
from chatbot.model.loader import load_model
loaded = load_model(sys.argv[1], device="cpu", precision="int8")
print(loaded.precision.details["int8_kernel"])
print(loaded.precision.reason)
"""


@pytest.mark.slow
def test_without_a_compiler_int8_loads_with_the_previous_kernel_and_says_why(random_fp8, tmp_path) -> None:
    """A fresh process with no C++ compiler and an empty kernel cache: INT8 still loads, the details say why."""
    env = {**os.environ, "CXX": "/nonexistent/c++", "QWEN_KERNEL_CACHE": str(tmp_path / "kernels")}
    done = subprocess.run(
        [sys.executable, "-c", NO_COMPILER, str(random_fp8)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    kernel, reason = done.stdout.splitlines()[:2]
    assert not kernel.startswith("dot") and "dot: no C++ compiler '/nonexistent/c++' found" in kernel
    assert "decode kernel" in reason
