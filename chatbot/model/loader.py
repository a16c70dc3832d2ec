"""Loading: checkpoint -> model on the device in the chosen precision, with the automatic fallback chain.

The model is built on the ``meta`` device from config.json (with ``quantization_config`` removed, so
transformers' own quantizer, which fetches kernels from the hub, is never involved) and filled
tensor by tensor from the safetensors files:

* ``fp8`` on a CUDA GPU with FP8 tensor cores: projection weights stay FP8 with their block
  scales in ``Fp8Linear`` layers; everything else BF16.
* ``fp16``/``bf16``/``fp32`` on a GPU: FP8 weights are dequantized, every tensor (embeddings and
  norms too) is cast to one dtype, so no dtype mismatch can reach the first forward.
* CPU: 16-bit weights in ``CpuLinear`` layers with an FP32 residual stream (see ``cpu_layers``), or
  with ``int8`` per-channel int8 weights in ``CpuInt8Linear`` layers (see ``cpu_int8``); ``auto``
  measures the int8 kernel against FP16 first, for models too large for the CPU caches.
* Apple MPS: loaded on CPU, then moved.

After loading, a probe forward (prompt + one decode step) must give finite logits; otherwise
the next mode of the chain is tried, and every attempt is recorded in the precision decision.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, PrecisionError
from .checkpoint import CheckpointInfo, FileHandles, inspect_checkpoint, resolve_checkpoint
from .cpu_decode import attach_decode_step
from .cpu_int8 import (
    MAX_RMS_ERROR,
    CpuInt8Linear,
    Int8KernelUnavailable,
    Int8Quality,
    attach_kernel,
    convert_to_int8_layers,
    fp16_weight_bytes,
    linear_shapes,
    quantize_per_channel,
    release_free_heap,
    select_int8_kernel,
    set_int8_tensor,
)
from .cpu_layers import (
    CpuLinear,
    PrefillChoice,
    batched_decode_rows,
    choose_prefill_dtype,
    convert_to_cpu_layers,
    keep_prefill_copies,
    short_name,
    vector_isa,
)
from .device import DeviceInfo, detect_device, is_sticky_cuda_fault
from .formats import PROJECTION_RE, FormatKind
from .fp8 import DEFAULT_BLOCK, quantize_block_fp8
from .fp8_linear import (
    Fp8DeviceFault,
    Fp8KernelUnavailable,
    Fp8Linear,
    reference_output,
    select_fp8_kernels,
    warm_fp8_layers,
)
from .fp8_packed import pack_mlps, packed_mlp_shapes
from .kv_attention import choose_kv_cache_dtype, kv_cache_dtype, use_kv16_attention
from .precision import (
    COMPUTE_DTYPES,
    Attempt,
    Candidate,
    Int8Rule,
    PrecisionDecision,
    batch_invariant_requested,
    batched_decode_path,
    plan_precision,
    resolve_request,
)

log = logging.getLogger(__name__)
DEFAULT_MAX_CONTEXT = 32768
RELEASE_FILES_BYTES = 64 * 2**20  # checkpoint bytes read between two closings of the files
INT8_MIN_MODEL_BYTES = 256 * 2**20  # smaller models stay in the CPU caches: fewer bytes gain nothing there
SUPPORTED_MODEL_TYPES = ("qwen3",)


class ProbeError(RuntimeError):
    """The probe forward raised or returned non-finite logits."""


@dataclass
class LoadProgress:
    """Where loading stands, for the UI's "loading..." badge; safe to read from any thread."""

    stage: str = "waiting"
    fraction: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, stage: str, fraction: float) -> None:
        with self._lock:
            self.stage, self.fraction = stage, max(0.0, min(1.0, fraction))

    def snapshot(self) -> tuple[str, float]:
        with self._lock:
            return self.stage, self.fraction


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    precision: PrecisionDecision
    checkpoint: CheckpointInfo
    device: torch.device
    weights_bytes: int
    load_seconds: float
    max_context: int
    eos_token_ids: tuple[int, ...]

    @property
    def generated(self) -> dict[str, Any] | None:
        """The ``generated`` note of checkpoints made by ``make-model`` (random weights), else None."""
        note = self.checkpoint.config.get("generated")
        return note if isinstance(note, dict) else None


ProbeFn = Callable[[nn.Module, Any, torch.device], None]


def load_model(
    source: str,
    *,
    device: str = "auto",
    precision: str | None = None,
    max_context: int | None = None,
    gpu_memory_limit: float | None = None,
    trust_remote_code: bool = False,
    progress: LoadProgress | None = None,
    probe: ProbeFn | None = None,
    device_info: DeviceInfo | None = None,
) -> LoadedModel:
    """Load a Qwen3 checkpoint, choosing the precision and stepping down the chain when needed.

    Args:
        source: local checkpoint folder or hub id.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps".
        precision: "auto", "fp8", "int8", "fp16", "bf16", "fp32", or None to read ``QWEN_PRECISION``.
        max_context: context window in tokens (default: the model's, at most 32768).
        gpu_memory_limit: fraction of GPU memory this process may use.
        trust_remote_code: let a checkpoint's own Python code run (off unless asked for).
        progress: receives (stage, fraction) while loading.
        probe: replaces the probe forward (tests use it to simulate failures).
        device_info: replaces device detection (tests simulate devices with it).
    Raises:
        CheckpointError, ModelUnavailableError: the checkpoint cannot be found or read.
        PrecisionError: no mode of the chain could load and run the model.
    """
    started = time.perf_counter()
    progress = progress or LoadProgress()
    progress.update("finding checkpoint", 0.0)
    path = resolve_checkpoint(source)
    progress.update("checking files", 0.03)
    info = inspect_checkpoint(path, source)
    model_type = info.config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        log.warning("%s is a %r model; this app is built for Qwen3 and may not handle it", source, model_type)
    tokenizer = _load_tokenizer(info, trust_remote_code)
    dev = device_info or detect_device(device)
    if dev.kind == "cuda" and gpu_memory_limit and not dev.simulated:
        torch.cuda.set_per_process_memory_fraction(gpu_memory_limit, dev.index)
    requested, request_source = resolve_request(precision)
    int8_speed = _int8_rule(info, dev, progress) if requested == "auto" else None
    candidates, attempts = plan_precision(
        requested, dev, checkpoint_fp8=info.format.is_fp8, checkpoint_dtype=info.native_dtype, int8_speed=int8_speed
    )
    for message in attempts:
        log.warning("%s; choosing another precision", message.detail)
    failed = ""
    for candidate in candidates:
        reason = candidate.reason.format(failed=failed)
        try:
            model, details = _build(info, dev, candidate.mode, progress, trust_remote_code, strict=requested == "auto")
            progress.update("probe forward", 0.95)
            (probe or probe_forward)(model, tokenizer, torch.device(dev.torch_device))
        except Exception as exc:
            if isinstance(exc, Fp8DeviceFault) or (dev.kind == "cuda" and is_sticky_cuda_fault(exc)):
                raise PrecisionError(
                    f"The GPU faulted while loading in {candidate.mode.upper()}: {_first_line(exc)}. After such a "
                    "fault CUDA cannot be used again in this process, so no other precision was tried.",
                    fix="Restart with --precision bf16 (or fp16) to skip the FP8 kernels, or with --device cpu; "
                    "`python -m chatbot doctor --load` shows each kernel's self-check.",
                ) from exc
            if not isinstance(exc, _step_down_errors()):
                raise
            detail = f"{candidate.mode.upper()} failed: {_first_line(exc)}"
            attempts.append(Attempt(candidate.mode, False, detail))
            log.warning("%s; stepping down the precision chain", detail)
            failed = f"{candidate.mode.upper()} failed ({_first_line(exc)})"
            model = None
            gc.collect()
            if dev.kind == "cuda":
                torch.cuda.empty_cache()
            continue
        attempts.append(Attempt(candidate.mode, True, "loaded; probe forward gave finite logits"))
        decision = _decision(candidate, reason, dev, info, (requested, request_source), attempts, details)
        log.info("Precision: %s", decision.summary())
        loaded = LoadedModel(
            model=model,
            tokenizer=tokenizer,
            precision=decision,
            checkpoint=info,
            device=torch.device(dev.torch_device),
            weights_bytes=weights_bytes(model),
            load_seconds=time.perf_counter() - started,
            max_context=_max_context(info, max_context),
            eos_token_ids=_eos_ids(info, tokenizer),
        )
        progress.update("ready", 1.0)
        return loaded
    raise PrecisionError(
        "No precision could load and run the model: " + "; ".join(a.detail for a in attempts if not a.ok),
        fix="Run `python -m chatbot doctor` for details; try --precision fp32 or --device cpu.",
    )


def _int8_rule(info: CheckpointInfo, dev: DeviceInfo, progress: LoadProgress) -> Int8Rule | None:
    """On a real CPU, for a model too large for the caches: whether INT8 decodes faster here, by the rule
    for the int8 kernel that passes its self-check on this CPU and the instruction set (``INT8_RULES``)."""
    if dev.kind != "cpu" or dev.simulated or info.config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        return None
    try:
        if fp16_weight_bytes(info.config) < INT8_MIN_MODEL_BYTES:
            return None
        layer, _ = linear_shapes(info.config)
    except (KeyError, TypeError, ValueError):
        return None  # an unusual config: the 16-bit path, which needs none of these fields
    progress.update("checking the int8 kernel", 0.04)
    try:
        kernel = select_int8_kernel(tuple(sorted(set(layer))))
    except Int8KernelUnavailable as exc:
        log.warning("INT8 not considered: %s", exc)
        return None
    rule = Int8Rule(kernel.name, vector_isa())
    log.info("INT8 %s: %s", "chosen" if rule.faster else "not chosen", rule.describe())
    return rule


def _step_down_errors() -> tuple[type[BaseException], ...]:
    """Failures after which the next precision is tried (a broken checkpoint is not one of them)."""
    errors: tuple[type[BaseException], ...] = (
        ProbeError,
        Fp8KernelUnavailable,
        Int8KernelUnavailable,
        RuntimeError,
        NotImplementedError,
    )
    errors += (TypeError, ValueError)
    try:  # Triton's compile and resource errors derive from Exception, not RuntimeError
        from triton.errors import TritonError
    except ImportError:
        return errors
    return (*errors, TritonError)


def _decision(
    candidate: Candidate,
    reason: str,
    dev: DeviceInfo,
    info: CheckpointInfo,
    request: tuple[str, str],
    attempts: list[Attempt],
    details: dict[str, str],
) -> PrecisionDecision:
    extra = details.get("reason_suffix")
    return PrecisionDecision(
        mode=candidate.mode,
        device=dev.torch_device,
        device_name=dev.describe(),
        reason=f"{reason}; {extra}" if extra else reason,
        requested=request[0],
        source=request[1],
        attempts=tuple(attempts),
        checkpoint_fp8=info.format.is_fp8,
        compute_dtype=str(details["compute_dtype"]).removeprefix("torch."),
        prefill_dtype=details.get("prefill_dtype"),
        fp8_kernel=details.get("fp8_kernel"),
        fp8_weight_only=details.get("fp8_weight_only") == "yes",
        kv_cache_dtype=details.get("kv_cache_dtype"),
        details={k: v for k, v in details.items() if k not in ("compute_dtype", "reason_suffix")},
    )


def _batched_decode_dtype(model: nn.Module, mode: str) -> str | None:
    """What CPU layers compute batched decode rows with, when it is not what a lone row uses (else None)."""
    for module in model.modules():
        if isinstance(module, CpuLinear) and module.prefill_weight is not None and module.decode_rows < 2:
            return f"the {short_name(module.prefill_weight.dtype)} prefill copy"
        if isinstance(module, CpuInt8Linear) and module.batch_kernel is not None and module.single_rows < 2:
            return "PyTorch's int8 kernel with BF16 activations"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _load_tokenizer(info: CheckpointInfo, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(info.path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"the tokenizer cannot be loaded: {_first_line(exc)}",
            path=info.path,
            fix="Copy tokenizer.json and tokenizer_config.json from the original Qwen3 model into this folder.",
        ) from exc


def _skeleton(info: CheckpointInfo, dtype: torch.dtype, trust_remote_code: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(info.path), trust_remote_code=trust_remote_code)
    if getattr(config, "quantization_config", None) is not None:
        # Weights are dequantized (or served by Fp8Linear) here; without this, save_pretrained would
        # write a config that claims a quantization the saved tensors do not have.
        del config.quantization_config
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)


def _build(
    info: CheckpointInfo,
    dev: DeviceInfo,
    mode: str,
    progress: LoadProgress,
    trust_remote_code: bool,
    strict: bool = False,
) -> tuple[nn.Module, dict[str, str]]:
    """Build the model for one mode; returns it with details for the precision decision.

    ``strict``: the mode was chosen automatically, so an INT8 model whose weights lie further than
    ``MAX_RMS_ERROR`` from the checkpoint's raises ``ProbeError`` (the next mode is tried).
    """
    details: dict[str, str] = {}
    target = torch.device("cpu" if dev.kind == "mps" else dev.torch_device)
    prefill: PrefillChoice | None = None
    compute_dtype = COMPUTE_DTYPES[mode]
    if mode == "fp8" and not dev.has_bf16:
        compute_dtype = torch.float16  # GPUs before Ampere: FP16 activations around the FP8 weights
    if dev.kind == "cpu" and mode in ("fp16", "bf16"):  # simulated GPUs keep the GPU layout
        prefill = choose_prefill_dtype(COMPUTE_DTYPES[mode])
        compute_dtype = torch.float32
        details["prefill_dtype"] = str(prefill.dtype).removeprefix("torch.")
        details["reason_suffix"] = f"decode with {mode.upper()} weights, {prefill.describe()}"
    if dev.kind == "cpu" and mode == "int8":
        prefill = choose_prefill_dtype(torch.int8)
        details["prefill_dtype"] = str(prefill.dtype).removeprefix("torch.")
        prefill = PrefillChoice(prefill.dtype, prefill.why, copy=False)  # the point of INT8 is its memory
    if dev.kind == "cuda" and mode == "fp32" and dev.capability and dev.capability >= (8, 0):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        details["tf32"] = "enabled for FP32 matmuls (Ampere or newer)"
    details["compute_dtype"] = str(compute_dtype)

    model = _skeleton(info, compute_dtype, trust_remote_code)
    if mode == "fp8":  # the kernels' self-check runs on the model's own layer shapes, before any weight is read
        block = _fp8_block(info)
        shapes = {(m.out_features, m.in_features) for _, m in _fp8_projections(model)}
        shapes = sorted(shapes | packed_mlp_shapes(model, block))
        progress.update("checking FP8 kernels", 0.04)
        kernels, notes = select_fp8_kernels(target, block, shapes=shapes, fp8_hardware=dev.has_fp8, dtype=compute_dtype)
        details["fp8_kernel"] = kernels.describe()
        details["fp8_weight_only"] = "yes" if kernels.weight_only else "no"
        if notes:
            details["fp8_kernels_skipped"] = "; ".join(notes)
        for name, module in _fp8_projections(model):
            model.set_submodule(name, Fp8Linear(module.in_features, module.out_features, block, kernels))
    quality = Int8Quality()
    if mode == "int8":
        progress.update("checking the int8 kernel", 0.04)
        convert_to_int8_layers(model, prefill.dtype)
        kernel = select_int8_kernel(_int8_shapes(model))
        details["int8_kernel"] = kernel.describe()
        details["int8_kernel_error"] = f"{kernel.error:.1e}"  # self-check vs FP32, relative to the largest output
    elif prefill is not None:
        convert_to_cpu_layers(model, COMPUTE_DTYPES[mode], prefill.dtype)
    _fill_weights(model, info, target, mode, progress, quality)
    if mode == "int8":
        attach_kernel(model, kernel, batched_decode_rows())
        details["int8_rms_error"] = f"{quality.worst:.4f}"
        if strict and quality.worst > MAX_RMS_ERROR:
            raise ProbeError(f"{quality.describe()}, beyond the {MAX_RMS_ERROR:.0%} bound for choosing INT8")
        if quality.worst > MAX_RMS_ERROR:
            log.warning("INT8 as requested, though %s (the automatic choice's bound is %s)", quality, MAX_RMS_ERROR)
        details["reason_suffix"] = f"{quality.describe()}; {kernel.name} decode kernel, {prefill.describe()}"
    if mode == "fp8":
        packed = pack_mlps(model)  # gate and up in one FP8 weight where their sizes allow
        if packed:
            details["fp8_packed"] = f"gate/up packed in {packed} MLPs"
        for layer in (m for m in model.modules() if isinstance(m, Fp8Linear)):
            layer.prepare_scales()  # every kernel's scale layout, once, before the first forward
        check_fp8_layer(model, compute_dtype)
        progress.update("compiling the FP8 kernels", 0.93)
        warm_fp8_layers(model, compute_dtype)
    if prefill is not None and prefill.copy:
        details["prefill_copy_bytes"] = str(keep_prefill_copies(model))
    invariant = batch_invariant_requested()
    model.qwen_batch_invariant = invariant  # read by the engine's batched decode step
    batched = _batched_decode_dtype(model, mode) if dev.kind == "cpu" else None
    details["batched_decode"] = batched_decode_path(mode, dev.kind, batched, invariant)
    if dev.kind == "cpu" and "reason_suffix" in details:
        details["reason_suffix"] += f"; {details['batched_decode']}"
    if dev.kind == "cpu":
        kv_choice = choose_kv_cache_dtype(mode)
        details["kv_cache"] = use_kv16_attention(model, kv_choice)
        details["kv_cache_dtype"] = str(kv_cache_dtype(model)).removeprefix("torch.")
        suffix = details.get("reason_suffix")
        details["reason_suffix"] = f"{suffix}; {details['kv_cache']}" if suffix else details["kv_cache"]
    if dev.kind == "cpu" and not dev.simulated and prefill is not None:
        progress.update("compiling the decode step", 0.9)
        details["decode_step"] = attach_decode_step(model, weights_bytes(model))
    if dev.kind == "mps":
        model.to("mps")
    model.eval()
    return model, details


def _int8_shapes(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """The distinct (out, in) shapes of the int8 layers, for the kernel's self-check."""
    return tuple(sorted({(m.out_features, m.in_features) for m in model.modules() if isinstance(m, CpuInt8Linear)}))


def _fp8_projections(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and PROJECTION_RE.match(name + ".weight")
    ]


FP8_LAYER_MAX_ERROR = 0.02


def check_fp8_layer(model: nn.Module, dtype: torch.dtype, rows: int = 16) -> None:
    """One real loaded layer against its own dequantized weights: the kernel, the weights and their scales agree.

    Raises:
        ProbeError: the layer's output differs from the reference by more than ``FP8_LAYER_MAX_ERROR``.
    """
    name, layer = next((n, m) for n, m in model.named_modules() if isinstance(m, Fp8Linear))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, layer.in_features, generator=generator).to(dtype)
    kernel = layer.kernels.decode  # what serves this many rows; a W8A8 kernel is held to the W8A8 reference
    reference = reference_output(kernel.kind, x, layer.weight.cpu(), layer.weight_scale_inv.cpu(), layer.block)
    with torch.inference_mode():
        out = layer(x.to(layer.weight.device)).float().cpu()
    error = ((out - reference).abs().max() / reference.abs().max().clamp(min=1e-30)).item()
    if not error <= FP8_LAYER_MAX_ERROR:
        raise ProbeError(
            f"the FP8 kernel {layer.kernels.describe()} disagrees with the dequantized weights of {name} "
            f"(error {error:.1%} of the largest output)"
        )


def _fp8_block(info: CheckpointInfo) -> tuple[int, int]:
    """Block size of the FP8 layers: the checkpoint's own, or 128x128 when weights are (re)quantized at load."""
    if info.format.kind is FormatKind.FP8_BLOCK and info.format.block_size:
        return info.format.block_size
    return DEFAULT_BLOCK


def _fill_weights(
    model: nn.Module,
    info: CheckpointInfo,
    device: torch.device,
    mode: str,
    progress: LoadProgress,
    quality: Int8Quality | None = None,
) -> None:
    """Read every tensor the model needs, converting it to the dtype its parameter has.

    Int8 parameters are quantized per row here; ``quality`` records their error.
    """
    # Fp8Linear scales are filled together with their weights.
    expected = {n: t for n, t in model.state_dict(keep_vars=True).items() if not n.endswith(".weight_scale_inv")}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    fmt = info.format
    missing = [n for n in expected if n not in info.tensors and not (tied and n == "lm_head.weight")]
    if missing:
        raise CheckpointError(
            f"{len(missing)} tensor(s) the model needs are missing, e.g. {', '.join(missing[:3])}",
            path=info.path,
            fix="The checkpoint is incomplete or not a Qwen3 model: download it again.",
        )
    names = [n for n in expected if n in info.tensors]
    read_since_release = 0
    with FileHandles() as files:
        for i, name in enumerate(names):
            param = expected[name]
            stored = info.read(name, files)
            read_since_release += stored.numel() * stored.element_size()
            if read_since_release > RELEASE_FILES_BYTES:  # safetensors maps its files: unmap what was read
                files.release()
                read_since_release = 0
            scale_name = fmt.scale_name(name) if stored.dtype == torch.float8_e4m3fn else None
            if tuple(stored.shape) != tuple(param.shape):
                raise CheckpointError(
                    f"tensor {name!r} has shape {list(stored.shape)}, the config implies {list(param.shape)}",
                    path=info.tensors[name].file,
                    fix="config.json does not match the weights: use the config.json that came with them.",
                )
            keep_fp8 = param.dtype == torch.float8_e4m3fn
            if keep_fp8 and scale_name and fmt.kind is FormatKind.FP8_BLOCK and fmt.block_size:
                value = stored.to(device)  # served as stored by Fp8Linear
                _set_tensor(model, name + "_scale_inv", info.read(scale_name, files).float().to(device))
            elif keep_fp8:  # other formats served in FP8: (re)quantized to 128x128 blocks at load
                dense = stored.to(device)
                if scale_name:
                    dense = fmt.dequantize(name, dense, info.read(scale_name, files).to(device), torch.float32)
                value, scale_inv = quantize_block_fp8(dense, _fp8_block(info), scale_dtype=torch.float32)
                _set_tensor(model, name + "_scale_inv", scale_inv)
            elif param.dtype == torch.int8:  # INT8 mode: per-row int8 from the checkpoint's own values
                dense = stored
                if scale_name:
                    dense = fmt.dequantize(name, stored, info.read(scale_name, files), torch.float32)
                _check_finite(name, dense, stored, info, mode)
                q, scale, error = quantize_per_channel(dense)
                if quality is not None:
                    quality.add(name, error)
                set_int8_tensor(model.get_submodule(name.rpartition(".")[0]), q, scale)
                del dense, stored
                release_free_heap()
                progress.update(f"loading weights {i + 1}/{len(names)}", 0.05 + 0.9 * (i + 1) / len(names))
                continue
            elif scale_name:
                value = fmt.dequantize(name, stored.to(device), info.read(scale_name, files).to(device), param.dtype)
            else:
                value = stored.to(device=device, dtype=param.dtype)
            _check_finite(name, value, stored, info, mode)
            _set_tensor(model, name, value)
            progress.update(f"loading weights {i + 1}/{len(names)}", 0.05 + 0.9 * (i + 1) / len(names))
    if tied:
        head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
        head.weight = embeddings.weight
        if isinstance(head, CpuInt8Linear):
            head.weight_scale = embeddings.weight_scale
    _rebuild_computed_buffers(model, device)


def _check_finite(name: str, value: torch.Tensor, stored: torch.Tensor, info: CheckpointInfo, mode: str) -> None:
    """NaN/inf in the file is a broken checkpoint; inf only after conversion is this mode's overflow."""
    if _all_finite(value):
        return
    if stored.dtype == torch.float8_e4m3fn or not _all_finite(stored):
        raise CheckpointError(
            f"tensor {name!r} holds NaN or infinite values",
            path=info.tensors[name].file,
            fix="The file is damaged or the model diverged in training: download or export it again.",
        )
    raise ProbeError(f"tensor {name!r} overflows in {mode.upper()}")


def _all_finite(tensor: torch.Tensor) -> bool:
    if tensor.dtype == torch.float8_e4m3fn:  # e4m3fn has no inf; NaN is the all-ones exponent and mantissa
        return not bool(((tensor.view(torch.uint8) & 0x7F) == 0x7F).any())
    return bool(torch.isfinite(tensor.abs().amax())) if tensor.numel() else True  # one reduction, NaN propagates


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[leaf] = value


def _rebuild_computed_buffers(model: nn.Module, device: torch.device) -> None:
    """Rotary inverse frequencies are computed, not stored: rebuild such modules on the real device."""
    for name, module in list(model.named_modules()):
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        if "Rotary" not in type(module).__name__:
            raise CheckpointError(f"module {name!r} has buffers that are neither stored nor computable")
        model.set_submodule(name, type(module)(config=module.config).to(device))


def probe_forward(model: nn.Module, tokenizer: Any, device: torch.device) -> None:
    """Prompt forward (the prefill path) then one cached decode step; both must give finite logits."""
    messages = [{"role": "user", "content": "Hello! Please introduce yourself in one short sentence, thank you."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    input_ids = torch.tensor([ids], device=device)
    with torch.inference_mode():
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        step = model(input_ids=input_ids[:, -1:], cache=out.cache, use_cache=True)
    for logits, what in ((out.logits, "prompt"), (step.logits, "decode step")):
        if not bool(torch.isfinite(logits).all()):
            raise ProbeError(f"probe forward returned non-finite logits (inf/NaN) on the {what}")


def weights_bytes(model: nn.Module) -> int:
    """Bytes of every parameter, buffer and CPU prefill copy (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    copies = [m.prefill_weight for m in model.modules() if getattr(m, "prefill_weight", None) is not None]
    for tensor in [*model.parameters(), *model.buffers(), *copies]:
        key = id(tensor) if tensor.is_mkldnn else tensor.data_ptr()  # packed copies have no data pointer
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def _max_context(info: CheckpointInfo, requested: int | None) -> int:
    native = int(info.config.get("max_position_embeddings") or DEFAULT_MAX_CONTEXT)
    return min(requested, native) if requested else min(native, DEFAULT_MAX_CONTEXT)


def _eos_ids(info: CheckpointInfo, tokenizer: Any) -> tuple[int, ...]:
    ids: set[int] = set()
    gen_file = info.path / "generation_config.json"
    if gen_file.exists():
        try:
            value = json.loads(gen_file.read_text(encoding="utf-8")).get("eos_token_id")
            ids.update(value if isinstance(value, list) else [value] if value is not None else [])
        except (OSError, json.JSONDecodeError):
            log.warning("%s cannot be parsed; using the tokenizer's end-of-turn tokens", gen_file)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    for token in ("<|im_end|>", "<|endoftext|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return tuple(sorted(ids))
