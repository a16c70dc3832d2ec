"""The 8-bit CPU mode: per-row int8 weights, its kernels (the dot kernel: test_cpu_int8_dot), the automatic choice."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import chatbot.model.loader as loader
from chatbot.engine.engine import ChatEngine
from chatbot.engine.sampling import sampling_options
from chatbot.model import cpu_int8
from chatbot.model.cpu_int8 import (
    CpuInt8Linear,
    Int8KernelUnavailable,
    dequantize,
    quantize_per_channel,
    select_int8_kernel,
)
from chatbot.model.device import DeviceInfo
from chatbot.model.loader import load_model
from chatbot.model.precision import Int8Rule, plan_precision


def int8_layer(weight: torch.Tensor, kernel_name: str | None = None) -> CpuInt8Linear:
    module = CpuInt8Linear(weight.shape[1], weight.shape[0], False, torch.float32)
    q, scale, _ = quantize_per_channel(weight)
    cpu_int8.set_int8_tensor(module, q, scale)
    module.kernel = select_int8_kernel(((weight.shape[0], weight.shape[1]),))
    if kernel_name is not None and module.kernel.name != kernel_name:
        module.kernel = cpu_int8.Int8Kernel(kernel_name, cpu_int8.KERNELS[kernel_name]())
    return module


def test_quantization_is_per_row_and_its_error_is_measured() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(300, 64, generator=generator)
    weight[7] *= 1000  # one row far larger: per-row scales keep the others precise
    weight[9] = 0  # an all-zero row quantizes without dividing by zero
    q, scale, error = quantize_per_channel(weight.to(torch.bfloat16))
    assert q.dtype == torch.int8 and scale.shape == (300,) and q.abs().max() == 127
    restored = dequantize(q, scale, torch.float32)
    assert torch.equal(restored[9], torch.zeros(64))
    row_error = (restored - weight.bfloat16().float()).norm(dim=1) / weight.norm(dim=1).clamp(min=1e-9)
    assert float(row_error.max()) < 0.02  # every row within 2%, the large one did not spoil the rest
    assert 0 < error < 0.02


def test_large_tables_are_quantized_in_slices_with_the_same_result(monkeypatch) -> None:
    weight = torch.randn(50, 32)
    whole = quantize_per_channel(weight)
    monkeypatch.setattr(cpu_int8, "QUANT_CHUNK_ROWS", 7)
    sliced = quantize_per_channel(weight)
    assert torch.equal(whole[0], sliced[0]) and torch.equal(whole[1], sliced[1])
    assert whole[2] == pytest.approx(sliced[2])


@pytest.mark.parametrize("kernel", ["inductor", "aten"])
@pytest.mark.parametrize("rows", [1, 2, 3, 16, 17, 64])
def test_both_kernels_and_the_prompt_path_match_the_dequantized_weights(kernel, rows) -> None:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(96, 128, generator=generator) * 0.05
    module = int8_layer(weight, kernel)
    x = torch.randn(2, rows, 128, generator=generator)
    with torch.inference_mode():
        out = module(x)
    reference = F.linear(x, dequantize(module.weight, module.weight_scale, torch.float32))
    assert out.dtype == torch.float32 and out.shape == (2, rows, 96)
    # The ATen kernel takes BF16 activations; the compiled one and the prompt path (FP32 here) are exact.
    tolerance = 0.02 if kernel == "aten" and rows * 2 <= module.decode_rows else 1e-4
    torch.testing.assert_close(out, reference, rtol=tolerance, atol=tolerance)


def test_a_row_gets_the_same_bits_alone_and_in_a_batch() -> None:
    module = int8_layer(torch.randn(256, 128))
    x = torch.randn(3, 128)
    with torch.inference_mode():
        together, alone = module(x), module(x[1:2].clone())
    assert torch.equal(together[1:2], alone)


def test_batched_rows_take_the_batch_kernel_and_a_lone_row_the_decode_kernel() -> None:
    weight = torch.randn(256, 128, generator=torch.Generator().manual_seed(2)) * 0.05
    module = int8_layer(weight)
    model = torch.nn.Sequential(module)
    cpu_int8.attach_kernel(model, module.kernel, single_rows=1)
    if module.kernel.name == "aten" or cpu_int8.batch_kernel() is None:
        pytest.skip("the decode kernel here is already the batch kernel")
    reference_layer = int8_layer(weight)  # single rows through the decode kernel, whatever the batch
    x = torch.randn(8, 128)
    with torch.inference_mode():
        assert torch.equal(module(x[:1].clone()), reference_layer(x[:1].clone()))
        batched = module(x)
        exact = F.linear(x, dequantize(module.weight, module.weight_scale, torch.float32))
    torch.testing.assert_close(batched, exact, rtol=0.02, atol=0.02)  # BF16 activations
    cpu_int8.attach_kernel(model, module.kernel, single_rows=16)  # QWEN_CPU_DECODE_ROWS=16: one kernel
    with torch.inference_mode():
        assert torch.equal(module(x)[1:2], reference_layer(x[1:2].clone()))


def test_a_kernel_that_fails_its_self_check_is_skipped_with_the_reason(monkeypatch) -> None:
    def wrong() -> cpu_int8.KernelFn:
        return lambda x, q, scale: F.linear(x, q.float())  # forgets the scales

    monkeypatch.setattr(cpu_int8, "KERNELS", {"wrong": wrong, "aten": cpu_int8._aten_kernel})
    select_int8_kernel.cache_clear()
    try:
        kernel = select_int8_kernel(((64, 64),))
        assert kernel.name == "aten" and "wrong:" in kernel.describe() and "off an FP32 reference" in kernel.describe()
        monkeypatch.setattr(cpu_int8, "KERNELS", {"wrong": wrong})
        select_int8_kernel.cache_clear()
        with pytest.raises(Int8KernelUnavailable, match=r"wrong: .*off an FP32 reference"):
            select_int8_kernel(((64, 64),))
    finally:
        select_int8_kernel.cache_clear()


FAST = Int8Rule("inductor", "AVX512")  # INT8_RULES: faster than FP16
SLOW = Int8Rule("aten", "AVX2")  # INT8_RULES: slower


def test_auto_on_cpu_picks_int8_by_the_rule_for_its_kernel_and_instruction_set() -> None:
    cpu = DeviceInfo.simulated_cpu()
    candidates, _ = plan_precision("auto", cpu, checkpoint_fp8=True, int8_speed=FAST)
    assert [c.mode for c in candidates] == ["int8", "fp16", "bf16", "fp32"]
    assert "1.37x FP16's tokens/s" in candidates[0].reason and "1 byte per weight" in candidates[0].reason
    assert "inductor kernel, AVX512 code" in candidates[0].reason
    candidates, _ = plan_precision("auto", cpu, checkpoint_fp8=True, int8_speed=SLOW)
    assert [c.mode for c in candidates] == ["fp16", "bf16", "fp32"]
    assert "INT8 not used: PyTorch's int8 kernel decoded 0.84x" in candidates[0].reason
    unknown = Int8Rule("vnni", "AVX512")  # a kernel the bench has not measured yet keeps FP16
    candidates, _ = plan_precision("auto", cpu, checkpoint_fp8=True, int8_speed=unknown)
    assert candidates[0].mode == "fp16" and "no measurement of the vnni int8 kernel" in candidates[0].reason
    candidates, _ = plan_precision("auto", cpu, checkpoint_fp8=True)  # not considered (a small model)
    assert candidates[0].mode == "fp16" and "INT8" not in candidates[0].reason


def test_the_int8_choice_is_a_rule_not_a_timing_so_the_same_machine_always_gets_the_same_mode(
    scripted_fp8, monkeypatch
) -> None:
    """Simulated machines (kernel, instruction set): no timing runs, and every load answers alike."""
    from chatbot.model.checkpoint import inspect_checkpoint, resolve_checkpoint
    from chatbot.model.device import detect_device
    from chatbot.model.loader import LoadProgress

    def no_timing(*args, **kwargs):
        raise AssertionError("auto must not time kernels at load")

    monkeypatch.setattr(cpu_int8, "measure_int8_speed", no_timing)
    monkeypatch.setattr(loader, "INT8_MIN_MODEL_BYTES", 0)
    info = inspect_checkpoint(resolve_checkpoint(str(scripted_fp8)), str(scripted_fp8))
    device = detect_device("cpu")
    for kernel, isa, expected in (("inductor", "AVX512", True), ("aten", "AVX2", False), ("aten", "AVX512", False)):
        monkeypatch.setattr(loader, "select_int8_kernel", lambda shapes, name=kernel: cpu_int8.Int8Kernel(name, None))
        monkeypatch.setattr(loader, "vector_isa", lambda isa=isa: isa)
        answers = {loader._int8_rule(info, device, LoadProgress()).faster for _ in range(5)}
        assert answers == {expected}, (kernel, isa)


def greedy(loaded, prompt: list[int], tokens: int = 24) -> tuple[int, ...]:
    engine = ChatEngine.from_loaded(loaded, max_batch=1, prefix_cache_tokens=0)
    try:
        (result,) = engine.run_batch([prompt], sampling_options(False, temperature=0, max_new_tokens=tokens))
    finally:
        engine.close()
    return result.token_ids


def test_int8_model_loads_with_half_the_weights_and_writes_the_same_script(scripted_fp8) -> None:
    fp16 = load_model(str(scripted_fp8), device="cpu", precision="fp16")
    int8 = load_model(str(scripted_fp8), device="cpu", precision="int8")
    decision = int8.precision
    assert decision.mode == "int8" and decision.label == "INT8"
    assert "int8 weights within" in decision.reason and "decode kernel" in decision.reason
    assert float(decision.details["int8_rms_error"]) < cpu_int8.MAX_RMS_ERROR
    assert int8.weights_bytes <= 0.65 * fp16.weights_bytes
    assert int8.model.get_output_embeddings().weight is not int8.model.get_input_embeddings().weight  # untied here
    prompt = fp16.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert greedy(int8, prompt) == greedy(fp16, prompt)


def test_auto_loads_int8_where_its_rule_says_faster_and_steps_down_beyond_the_error_bound(
    scripted_fp8, monkeypatch
) -> None:
    monkeypatch.setattr(loader, "INT8_MIN_MODEL_BYTES", 0)  # treat the tiny model as one beyond the caches
    monkeypatch.setattr(loader, "_int8_rule", lambda info, dev, progress: FAST)
    decision = load_model(str(scripted_fp8), device="cpu").precision
    assert decision.mode == "int8" and decision.label == "INT8 fallback" and "1.37x" in decision.reason
    monkeypatch.setattr(loader, "MAX_RMS_ERROR", 1e-6)
    decision = load_model(str(scripted_fp8), device="cpu").precision
    assert [(a.mode, a.ok) for a in decision.attempts] == [("int8", False), ("fp16", True)]
    assert "beyond the 0% bound" in decision.attempts[0].detail
    # Asked for by name, INT8 is kept whatever its error (the log warns).
    assert load_model(str(scripted_fp8), device="cpu", precision="int8").precision.mode == "int8"


def test_a_tied_output_head_shares_the_int8_table_and_its_scales(random_fp8) -> None:
    loaded = load_model(str(random_fp8), device="cpu", precision="int8")
    assert loaded.model.config.tie_word_embeddings
    head, embeddings = loaded.model.get_output_embeddings(), loaded.model.get_input_embeddings()
    assert head.weight is embeddings.weight and head.weight_scale is embeddings.weight_scale  # stored once


AVX2_CHECK = """
import torch, torch.nn.functional as F
from chatbot.model.cpu_int8 import dequantize, quantize_per_channel, select_int8_kernel
kernel = select_int8_kernel(((3072, 1024),))
q, scale, _ = quantize_per_channel(torch.randn(3072, 1024))
with torch.inference_mode():
    x = torch.randn(1, 1024)
    reference = F.linear(x, dequantize(q, scale, torch.float32))
    error = float((kernel.fn(x, q, scale) - reference).abs().max() / reference.abs().max())
print(kernel.name, error, kernel.isa or "-")
"""


@pytest.mark.slow
def test_the_kernel_chosen_for_avx2_code_is_right() -> None:
    """torch 2.13's Inductor sums int8 rows wrongly in AVX2 code; the self-check must refuse it there."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run([sys.executable, "-c", AVX2_CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    name, error, isa = done.stdout.split()
    assert name in cpu_int8.KERNELS and float(error) < cpu_int8.SELF_CHECK_MAX_ERROR
    assert isa == ("avx2" if name == "dot" else "-")  # the dot kernel's AVX2 code, as llama.cpp's AVX2 build
