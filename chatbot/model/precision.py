"""The precision decision: which mode the model runs in, on which device, and why.

The rules are pure functions of (request, checkpoint, device), so they are tested with simulated
devices. The loader walks the planned chain: it loads the first candidate, runs a probe forward,
and steps down when loading raises or the logits are not finite, recording every attempt. The chain
depends on the device: fp8 -> bf16 -> fp16 -> fp32 on GPUs with native BF16 (Qwen3 is trained in
BF16, and FP16 can overflow), fp8 -> fp16 -> fp32 on older GPUs, int8 -> fp16 -> bf16 -> fp32 on the
CPU (whose FP16 path recomputes an overflowing step in FP32). ``auto`` picks INT8 on a CPU by a rule
per (int8 decode kernel, instruction set) written from the bench's measurements (``INT8_RULES``),
never from a timing at load: one-shot timings flipped between two loads of the same checkpoint on
the same machine, and a rule gives the same machine and checkpoint the same mode every time.

FP8 on CUDA: native on compute capability >= 8.9 (FP8 tensor cores); below that "weight-only" (the
FP8 bytes stay in memory and are decoded inside the matmul, as FP8 Marlin does), if the kernel passes
its self-check on that GPU. The final ``PrecisionDecision`` is what the log, the UI badge, the API's
``/health`` and ``doctor`` all show.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch

from ..errors import InvalidRequestError
from ..settings import tuning
from .device import BF16_MIN_CAPABILITY, FP8_MIN_CAPABILITY, DeviceInfo

MODES = ("fp8", "int8", "fp16", "bf16", "fp32")
CHAIN = MODES  # step-down order on the CPU and Apple GPUs (modes a device cannot run are left out)
ENV_VAR = "QWEN_PRECISION"

# Dtype that activations (and, except for fp8, weights) use in each mode.
COMPUTE_DTYPES = {
    "fp8": torch.bfloat16,
    "int8": torch.float32,  # CPU only: int8 weights, FP32 activations
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
}


# auto's INT8-or-FP16 choice on a CPU, by (int8 decode kernel that passed its self-check, vector instruction
# set PyTorch uses): (INT8 decodes faster, the measurement behind it). Measured with `bench --peer llama.cpp`
# (served decode, interleaved rounds, medians); a kernel or instruction set without an entry keeps FP16.
INT8_RULES: dict[tuple[str, str], tuple[bool, str]] = {
    ("dot", "AVX512"): (
        True,
        "the int8 dot-product kernel's matrix products took 0.74x the compiled kernel's time, and the compiled "
        "decode step ran 1.44x faster with it (2-core AVX-512 VNNI CPU); the compiled kernel already decoded "
        "1.37x FP16's tokens/s",
    ),
    ("inductor", "AVX512"): (True, "INT8 decoded 1.37x FP16's tokens/s with this kernel (2-core AVX-512 CPU)"),
    ("aten", "AVX512"): (False, "PyTorch's int8 kernel decoded slower than FP16 (2-core AVX-512 CPU)"),
    ("aten", "AVX2"): (False, "PyTorch's int8 kernel decoded 0.84x FP16's tokens/s (17.3 vs 20.6, AVX2 kernels)"),
}


@dataclass(frozen=True)
class Int8Rule:
    """Whether INT8 decodes faster than FP16 here, by ``INT8_RULES`` (same machine, same answer)."""

    kernel: str  # the int8 decode kernel that passed its self-check (cpu_int8)
    isa: str  # the vector instruction set PyTorch's kernels use ("AVX512", "AVX2", ...)

    @property
    def faster(self) -> bool:
        return INT8_RULES.get((self.kernel, self.isa), (False, ""))[0]

    def describe(self) -> str:
        rule = INT8_RULES.get((self.kernel, self.isa))
        if rule is None:
            return f"no measurement of the {self.kernel} int8 kernel with {self.isa} code (bench --peer llama.cpp)"
        return f"{rule[1]}; {self.kernel} kernel, {self.isa} code"


@dataclass(frozen=True)
class Candidate:
    mode: str
    reason: str


@dataclass(frozen=True)
class Attempt:
    mode: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class PrecisionDecision:
    """The mode the model runs in, with the reason in one sentence and every attempt made."""

    mode: str
    device: str
    reason: str
    source: str = "auto"
    requested: str = "auto"
    attempts: tuple[Attempt, ...] = ()
    checkpoint_fp8: bool = True
    compute_dtype: str = "bfloat16"
    prefill_dtype: str | None = None  # CPU only: dtype the long prompt matmuls run in
    fp8_kernel: str | None = None  # fp8 only: which matmul kernel(s) passed the self-check
    fp8_weight_only: bool = False  # fp8 only: weights decoded by bit arithmetic, no FP8 hardware used
    device_name: str = ""
    details: dict[str, str] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.compute_dtype)

    @property
    def label(self) -> str:
        """Short name for badges: "FP8 native", "FP16 fallback", "BF16", ..."""
        if self.mode == "fp8":
            return "FP8 weight-only" if self.fp8_weight_only else "FP8 native"
        name = self.mode.upper()
        return f"{name} fallback" if self.checkpoint_fp8 and self.requested != self.mode else name

    def summary(self) -> str:
        """The one log line: label, device and reason."""
        return f"{self.label} on {self.device} ({self.device_name}): {self.reason}"

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["label"] = self.label
        data["attempts"] = [asdict(a) for a in self.attempts]
        return data


def resolve_request(argument: str | None, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """Apply the priority argument > ``QWEN_PRECISION`` > auto.

    Returns:
        (requested mode or "auto", where it came from)
    Raises:
        InvalidRequestError: the value is not one of auto, fp8, fp16, bf16, fp32.
    """
    environ = os.environ if environ is None else environ
    if argument is not None and argument != "auto":
        return _validated(argument, "precision argument"), "argument"
    env_value = environ.get(ENV_VAR, "").strip().lower()
    if env_value and env_value != "auto" and argument is None:
        return _validated(env_value, ENV_VAR), f"environment ({ENV_VAR})"
    return "auto", "auto"


def _validated(value: str, where: str) -> str:
    value = value.strip().lower()
    if value not in MODES:
        raise InvalidRequestError(
            f"Unknown precision {value!r} from {where}.",
            param="precision",
            fix="Use auto, fp8, int8, fp16, bf16 or fp32.",
        )
    return value


def unsupported_reason(mode: str, device: DeviceInfo) -> str | None:
    """Why ``device`` cannot run ``mode``, or None when it can."""
    if mode == "fp8" and device.kind != "cuda":
        return f"no CUDA GPU ({device.kind}) to run FP8 matmuls"
    if mode == "int8" and device.kind != "cpu":
        return f"INT8 is a CPU mode ({device.kind}: the FP8 or 16-bit modes serve it)"
    if mode == "bf16" and not device.has_bf16:
        if device.kind == "cuda":
            return (
                f"GPU compute capability {device.capability_text} < "
                f"{BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]} has no native BF16"
            )
        return f"{device.kind} has no reliable BF16 support"
    return None


def no_fp8_tensor_cores(device: DeviceInfo) -> str:
    return (
        f"GPU compute capability {device.capability_text} < "
        f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} has no FP8 tensor cores"
    )


def fallback_chain(device: DeviceInfo) -> tuple[str, ...]:
    """The step-down order on ``device``, best first."""
    if device.kind == "cuda":
        return ("fp8", "bf16", "fp16", "fp32") if device.has_bf16 else ("fp8", "fp16", "fp32")
    return CHAIN


def plan_precision(
    requested: str,
    device: DeviceInfo,
    *,
    checkpoint_fp8: bool,
    checkpoint_dtype: str = "bfloat16",
    int8_speed: Int8Rule | None = None,
) -> tuple[list[Candidate], list[Attempt]]:
    """Order the modes to try, best first, each with the sentence that explains it.

    Args:
        requested: "auto" or a mode the user asked for.
        device: the device (real or simulated).
        checkpoint_fp8: whether the checkpoint stores FP8 weights.
        checkpoint_dtype: dtype of a plain checkpoint ("bfloat16", "float16", "float32").
        int8_speed: on a CPU, whether the int8 decode kernel beats FP16 here (``Int8Rule``; None: not
            considered, e.g. a model that fits in the CPU caches).
    Returns:
        (candidates, refused) where refused records requested modes the device cannot run.
    """
    refused: list[Attempt] = []
    first: Candidate
    if requested != "auto":
        why_not = unsupported_reason(requested, device)
        if why_not is None:
            first = Candidate(requested, f"{requested.upper()} as requested")
        else:
            refused.append(Attempt(requested, False, f"{requested.upper()} requested but {why_not}"))
            first = _auto_choice(device, checkpoint_fp8, checkpoint_dtype, int8_speed, requested_failed=requested)
    else:
        first = _auto_choice(device, checkpoint_fp8, checkpoint_dtype, int8_speed)

    candidates = [first]
    chain = fallback_chain(device)
    for mode in chain[chain.index(first.mode) + 1 :]:
        if unsupported_reason(mode, device) is None:
            candidates.append(Candidate(mode, f"{mode.upper()} after {{failed}}"))
    return candidates, refused


def _auto_choice(
    device: DeviceInfo,
    checkpoint_fp8: bool,
    checkpoint_dtype: str,
    int8_speed: Int8Rule | None = None,
    requested_failed: str | None = None,
) -> Candidate:
    prefix = f"{requested_failed.upper()} unavailable, " if requested_failed else ""
    if device.kind == "cuda":
        if checkpoint_fp8 and device.has_fp8:
            return Candidate(
                "fp8", f"FP8 native: GPU compute capability {device.capability_text} >= 8.9 has FP8 tensor cores"
            )
        if checkpoint_fp8:
            activations = "BF16" if device.has_bf16 else "FP16"
            return Candidate(
                "fp8",
                f"{prefix}FP8 weight-only: {no_fp8_tensor_cores(device)}, so the FP8 weights stay 1 byte in GPU "
                f"memory and are decoded inside the matmul ({activations} activations)",
            )
        if checkpoint_dtype == "bfloat16" and device.has_bf16:
            return Candidate("bf16", f"{prefix}BF16: the checkpoint's own dtype, supported by this GPU")
        if checkpoint_dtype == "float32":
            return Candidate("fp32", f"{prefix}FP32: the checkpoint's own dtype")
        return Candidate("fp16", f"{prefix}FP16: half precision supported by every CUDA GPU")
    if device.kind == "mps":
        return Candidate("fp16", f"{prefix}FP16 fallback: Apple GPU has no FP8; weights loaded on CPU, then moved")
    # CPU: decode is bound by memory bandwidth, so fewer bytes per weight mean more tokens per second.
    # INT8 halves FP16's bytes, but is chosen only where its kernel decodes faster on this instruction set
    # (INT8_RULES; the loader asks for models too large for the CPU caches, and bounds INT8's error at load).
    # The loader also measures which dtype the long prompt matmuls run fastest in and adds it to the reason.
    if int8_speed is not None and int8_speed.faster:
        return Candidate("int8", f"{prefix}INT8: 1 byte per weight, {int8_speed.describe()}")
    why = unsupported_reason("fp8", device)
    slower = f"; INT8 not used: {int8_speed.describe()}" if int8_speed is not None else ""
    if checkpoint_fp8:
        return Candidate("fp16", f"{prefix}FP16 fallback: {why}, so the FP8 weights are dequantized to FP16{slower}")
    return Candidate("fp16", f"{prefix}FP16 on CPU: 16-bit weights halve the bytes read per generated token{slower}")


BATCH_INVARIANT_VAR = "QWEN_BATCH_INVARIANT"


def batch_invariant_requested(environ: dict[str, str] | None = None) -> bool:
    """``QWEN_BATCH_INVARIANT=1``: requests decoded together run row by row, each exactly as it runs alone.

    Off by default: a matmul's rounding depends on how many rows it multiplies (and on the CPU batched
    rows use faster weights: the BF16 prefill copy, PyTorch's int8 kernel), so a seeded reply can differ
    in a batch from the same request alone; decoding every row alone costs the batching's speed.

    Raises:
        ValueError: a value other than 0/1, true/false, yes/no, on/off.
    """
    return tuning(environ).batch_invariant


def batched_decode_path(mode: str, device_kind: str, batched_dtype: str | None, invariant: bool) -> str:
    """One sentence for the reason: what requests decoded together (2 or more rows) compute with."""
    if invariant:
        return f"requests decoded together run one by one, each as alone ({BATCH_INVARIANT_VAR}=1)"
    if batched_dtype is None:
        return f"requests decoded together use the same {mode.upper()} weights as one alone"
    return (
        f"requests decoded together use {batched_dtype}, so a seeded reply may differ from the same request "
        f"alone ({BATCH_INVARIANT_VAR}=1 decodes each as alone)"
    )
