"""The precision decision: rules for simulated devices, the priority of requests, and the fallback chain."""

from __future__ import annotations

import pytest
import torch

from chatbot.errors import InvalidRequestError, PrecisionError
from chatbot.model.device import DeviceInfo
from chatbot.model.loader import ProbeError, load_model
from chatbot.model.precision import plan_precision, resolve_request

CPU = DeviceInfo.simulated_cpu()


def modes(candidates) -> list[str]:
    return [c.mode for c in candidates]


@pytest.mark.parametrize(
    ("capability", "chain", "reason"),
    [
        ((7, 5), ["fp8", "fp16", "fp32"], "FP8 weight-only: GPU compute capability 7.5 < 8.9 has no FP8 tensor cores"),
        ((8, 0), ["fp8", "bf16", "fp16", "fp32"], "FP8 weight-only: GPU compute capability 8.0 < 8.9"),
        ((8, 6), ["fp8", "bf16", "fp16", "fp32"], "FP8 weight-only: GPU compute capability 8.6 < 8.9"),
        ((8, 9), ["fp8", "bf16", "fp16", "fp32"], "FP8 native: GPU compute capability 8.9 >= 8.9"),
        ((9, 0), ["fp8", "bf16", "fp16", "fp32"], "FP8 native: GPU compute capability 9.0 >= 8.9"),
    ],
)
def test_fp8_checkpoint_on_simulated_gpus(capability, chain, reason) -> None:
    """FP8 first everywhere on CUDA (weight-only below 8.9), then BF16 before FP16 where BF16 is native."""
    candidates, refused = plan_precision("auto", DeviceInfo.simulated_cuda(capability), checkpoint_fp8=True)
    assert modes(candidates) == chain
    assert candidates[0].reason.startswith(reason)
    assert refused == []


def test_fp8_checkpoint_on_cpu_falls_back_to_fp16_and_says_why() -> None:
    candidates, _ = plan_precision("auto", CPU, checkpoint_fp8=True)
    assert modes(candidates) == ["fp16", "bf16", "fp32"]
    assert "FP16 fallback: no CUDA GPU" in candidates[0].reason
    assert "dequantized" in candidates[0].reason


def test_bf16_checkpoint_keeps_its_dtype_where_the_gpu_supports_it() -> None:
    ampere, turing = DeviceInfo.simulated_cuda((8, 6)), DeviceInfo.simulated_cuda((7, 5))
    assert plan_precision("auto", ampere, checkpoint_fp8=False)[0][0].mode == "bf16"
    assert plan_precision("auto", turing, checkpoint_fp8=False)[0][0].mode == "fp16"


def test_explicit_fp8_without_a_gpu_is_refused_with_the_reason() -> None:
    candidates, refused = plan_precision("fp8", CPU, checkpoint_fp8=True)
    assert [a.mode for a in refused] == ["fp8"]
    assert "no CUDA GPU" in refused[0].detail
    assert candidates[0].mode == "fp16"


def test_explicit_fp8_on_ampere_is_the_weight_only_path() -> None:
    candidates, refused = plan_precision("fp8", DeviceInfo.simulated_cuda((8, 6)), checkpoint_fp8=True)
    assert refused == [] and modes(candidates) == ["fp8", "bf16", "fp16", "fp32"]


def test_explicit_bf16_on_turing_is_refused() -> None:
    candidates, refused = plan_precision("bf16", DeviceInfo.simulated_cuda((7, 5)), checkpoint_fp8=True)
    assert refused and "no native BF16" in refused[0].detail
    assert modes(candidates) == ["fp8", "fp16", "fp32"]
    assert candidates[0].reason.startswith("BF16 unavailable, FP8 weight-only")


def test_request_priority_argument_then_environment_then_auto() -> None:
    assert resolve_request("fp32", {"QWEN_PRECISION": "bf16"}) == ("fp32", "argument")
    assert resolve_request(None, {"QWEN_PRECISION": "bf16"}) == ("bf16", "environment (QWEN_PRECISION)")
    assert resolve_request(None, {}) == ("auto", "auto")
    assert resolve_request("auto", {"QWEN_PRECISION": "bf16"}) == ("auto", "auto")  # explicit auto wins
    with pytest.raises(InvalidRequestError, match="auto, fp8, int8, fp16, bf16 or fp32"):
        resolve_request(None, {"QWEN_PRECISION": "int4"})


def test_probe_that_raises_steps_down_the_chain_and_records_why(scripted_fp8) -> None:
    calls = []

    def probe(model, tokenizer, device):
        calls.append(next(model.parameters()).dtype)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: simulated kernel failure")

    loaded = load_model(str(scripted_fp8), device="cpu", probe=probe)
    decision = loaded.precision
    assert decision.mode == "bf16"
    assert [(a.mode, a.ok) for a in decision.attempts] == [("fp16", False), ("bf16", True)]
    assert "simulated kernel failure" in decision.attempts[0].detail
    assert "after FP16 failed" in decision.reason
    assert decision.label == "BF16 fallback"


def test_probe_with_nan_logits_steps_down_to_fp32(scripted_fp8) -> None:
    def probe(model, tokenizer, device):
        if any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters()):
            raise ProbeError("probe forward returned non-finite logits (inf/NaN) on the prompt")

    decision = load_model(str(scripted_fp8), device="cpu", probe=probe).precision
    assert [(a.mode, a.ok) for a in decision.attempts] == [("fp16", False), ("bf16", False), ("fp32", True)]
    assert decision.mode == "fp32" and decision.compute_dtype == "float32"
    assert "non-finite logits" in decision.attempts[0].detail


def test_every_mode_failing_is_one_clear_error(scripted_fp8) -> None:
    def probe(model, tokenizer, device):
        raise ProbeError("probe forward returned non-finite logits (inf/NaN) on the prompt")

    with pytest.raises(PrecisionError, match="No precision could load and run the model") as caught:
        load_model(str(scripted_fp8), device="cpu", probe=probe)
    assert "FP16 failed" in str(caught.value) and "FP32 failed" in str(caught.value)
    assert "doctor" in str(caught.value)


def test_environment_variable_picks_the_mode(scripted_fp8, monkeypatch) -> None:
    monkeypatch.setenv("QWEN_PRECISION", "fp32")
    decision = load_model(str(scripted_fp8), device="cpu").precision
    assert decision.mode == "fp32" and decision.source == "environment (QWEN_PRECISION)"
    assert decision.label == "FP32"


def test_decision_is_one_readable_line(scripted_fp8) -> None:
    decision = load_model(str(scripted_fp8), device="cpu").precision
    assert decision.label == "FP16 fallback"
    line = decision.summary()
    assert line.startswith("FP16 fallback on cpu")
    assert "no CUDA GPU" in line and "prefill in" in line
    assert decision.to_dict()["attempts"][-1]["ok"] is True
